"""``python -m classify label``: label images in the browser. This front end checks the flags, takes the port, opens
the session (:mod:`classify.labeling.app`, imported only when the command runs: ``--help`` loads no web server),
prints the page's address and serves it with uvicorn until Ctrl+C."""
from __future__ import annotations

import errno
import logging
import socket

from store.validation import Int, UserError, check_flags

log = logging.getLogger(__name__)

FLAGS = {"port": [Int(0, 65535)], "batch": [Int(1, 500)], "seed": [Int(0, 2**32 - 1)]}
#: hosts that only this machine reaches
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port); one line when the port is taken or the host is
    not an address of this machine."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise UserError(f"--host {host}: cannot resolve it ({err.strerror}); use 127.0.0.1 (this machine "
                         "only)") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a kill may take the port
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use (another `classify label`, or another server); pass "
                             "another --port, e.g. --port 0 for any free one") from None
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror}); pass another --host or --port") from None
    return sock


def address(sock: socket.socket, host: str) -> str:
    """The page's URL for a bound socket."""
    port = sock.getsockname()[1]
    shown = host if ":" not in host else f"[{host}]"
    return f"http://{shown}:{port}/"


def label(store: str, backbone: str | None = None, method: str = "auto", port: int = 8765, host: str = "127.0.0.1",
          batch: int = 12, answers: str | None = None, seed: int = 0, **params) -> None:
    """Label images in the browser: the images suggest would pick next, one button (or number key) per class.

    Every answer is saved the moment it is given: a line in the answers CSV and the label in the store (its label
    history records it), so closing the browser or stopping the server loses nothing, and the next start continues
    the batch. After each batch the method is refitted in the background and the page shows its cross-validated
    accuracy on the labels so far and how it moved. The Audit tab walks the labels audit suspects, to keep or fix.

    Parameters
    ----------
    store : str
        The feature store (.h5) written by `python -m embed run`; answers are written into it.
    backbone : str
        Backbone spec in the store (default: the store's only backbone).
    method : str
        The method that picks the batches and whose accuracy is shown (default auto: the probe, or the
        semi-supervised method that beats it in cross-validation on the labels).
    port : int
        The port to serve on (0: any free port; the address is printed).
    host : str
        The address to listen on; the default 127.0.0.1 serves this machine only (anyone who reaches another
        address can change your labels).
    batch : int
        Images per batch; the method is refitted after each.
    answers : str
        The answers CSV (id,label,time; appended, newest last: a changed answer is a later line of the same id):
        default <store name>.answers.csv beside the store.
    seed : int
        Seeds the picks and the cross-validation folds.
    **params
        The method's parameters, e.g. --k 20.

    Examples
    --------
    python -m classify label --store feats.h5
    python -m classify label --store feats.h5 --batch 20 --port 0
    python -m classify label --store feats.h5 --method linear --answers answers.csv
    """
    check_flags(dict(port=port, batch=batch, seed=seed), FLAGS)
    if not isinstance(host, str) or not host.strip():
        raise UserError("--host must be an address such as 127.0.0.1")
    if params:
        from classify.cli.commands import _check_params

        _check_params(method, params)
    sock = bind(host, port)
    try:
        serve(sock, host, dict(store=store, backbone=backbone, method=method, batch=batch, answers=answers, seed=seed,
                               params=params))
    finally:
        sock.close()


def serve(sock: socket.socket, host: str, options: dict) -> None:
    """Open the session, print the address, serve until Ctrl+C (or a terminating signal)."""
    import uvicorn

    from classify.labeling.app.routes import create_app
    from classify.labeling.app.session import LabelSession

    session = LabelSession(**options)
    url = address(sock, host)
    hosts = None if host in ("0.0.0.0", "::") else sorted({host, *LOCAL_HOSTS})
    if host not in LOCAL_HOSTS:
        log.warning("serving on %s: anyone who can reach it can change the labels of %s", host, options["store"])
    print(f"labeling {options['store']} at {url} (answers also go to {session.log.path}); Ctrl+C stops, every "
          "answer is saved when given", flush=True)
    config = uvicorn.Config(create_app(session, allowed_hosts=hosts), log_level="warning", access_log=False,
                            lifespan="off")
    methods = logging.getLogger("classify.methods")
    level = methods.level
    if not log.isEnabledFor(logging.DEBUG):
        methods.setLevel(logging.WARNING)  # every refit would log its fits: the terminal keeps the app's own lines
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        methods.setLevel(level)
