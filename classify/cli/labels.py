"""``python -m classify suggest|audit``: which images to label next, which labels look wrong; each writes a CSV and
an HTML contact sheet beside it (the report's page code, :mod:`classify.pages`)."""
from __future__ import annotations

from pathlib import Path

from classify.labeling import SCORES, STRATEGIES
from classify.pages import Group, contact_sheet, esc, page, steps
from store.outputs import check_output, write_text
from store.validation import BOOL, Int, Options, UserError, check_flags

#: seeds stop below 2**32: scikit-learn's KMeans and StratifiedKFold take no more
FLAGS = {"budget": [Int(1)], "seed": [Int(0, 2**32 - 1)], "folds": [Int(2)],
         "strategy": [Options(*STRATEGIES)], "all_rows": [BOOL], "html": [BOOL]}


def sheet_path(csv_path: str | Path) -> Path:
    """The contact sheet written beside a CSV: the CSV's name with ``.html``."""
    return Path(csv_path).with_suffix(".html")


def check_outputs(out, store: str, html: bool) -> Path:
    """The CSV (and with ``html`` its page) checked before any work (:func:`store.outputs.check_output`); a CSV
    named like its page is refused: the page would replace it."""
    out = check_output(out, inputs={"--store": store})
    if html:
        if sheet_path(out) == out:
            raise UserError(f"--out {out} would be both the CSV and its HTML page (written beside the CSV with "
                             f".html); pass --out {out.with_suffix('.csv')} (the page becomes {out}), or add --nohtml")
        check_output(sheet_path(out), "the page of --out", inputs={"--store": store})
    return out


def write_sheet(title: str, subtitle: str, groups, csv_path: str | Path, before: str = "", after: str = "") -> Path:
    """The contact sheet of ``groups`` (``[(title, [(image path, caption), ...]), ...]``) as ``<csv stem>.html``
    beside the CSV, thumbnails under ``thumbs/`` there: static, opens without the suite. ``before`` and ``after``:
    HTML above and below the thumbnails."""
    csv_path = Path(csv_path)
    out = csv_path.parent
    out.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet([Group(name, [p for p, _ in items], [c for _, c in items]) for name, items in groups], out)
    return write_text(sheet_path(csv_path), page(title, "\n".join(filter(None, [before, sheet, after])), subtitle))


def suggest(store: str, backbone: str | None = None, method: str = "auto", budget: int = 20,
            out: str = "to_label.csv", seed: int = 0, strategy: str = "diverse", html: bool = True,
            data_root: str | None = None, **params) -> None:
    """The unlabeled images whose labels would help most: informative, diverse and class-balanced.

    Failed images and duplicates (same sha256) of labeled images are never suggested.

    Parameters
    ----------
    store : str
        The feature store (.h5) written by `python -m embed run`.
    backbone : str
        Backbone spec in the store (default: the store's only backbone).
    method : str
        The method whose transductive probabilities measure uncertainty (default auto: the probe, or the
        semi-supervised method that beats it in cross-validation on the labels).
    budget : int
        How many images to suggest (at most the size of the unlabeled pool).
    out : str
        The CSV to write: rank, id, path, predicted, score, reason; rank 1 (the highest score) first, so label from
        the top when there is no time for all. The score, in [0, 1]: with diverse and margin, how undecided the
        method is, 1 − (p1 − p2) of its two highest class probabilities (1: it cannot tell the two apart, 0: it is
        sure), which diverse weighs by 0.5 to 1 for how central the image is in its group; with typiclust, the
        image's typicality (1: the most typical); with random, 0.
    seed : int
        The same store and seed give the same suggestions.
    strategy : str
        Which images: diverse (uncertain images clustered into budget groups, one central image each, spread over
        the predicted classes; default), margin (uncertainty alone), typiclust (coverage alone) or random.
    html : bool
        Also write OUT with .html: the suggestions' thumbnails in rank order, what the score means and what to do
        next.
    data_root : str
        The folder holding the images, when it moved since `python -m embed run` (default: the data folder the
        store records).
    **params
        The method's parameters, e.g. --k 20.

    Examples
    --------
    python -m classify suggest --store feats.h5 --budget 40 --out to_label.csv
    python -m classify suggest --store feats.h5 --backbone timm:tf_efficientnet_lite0 --strategy typiclust
    """
    check_flags(dict(budget=budget, seed=seed, strategy=strategy, html=html), FLAGS)
    out = check_outputs(out, store, html)
    from classify.labeling import suggest as suggest_module  # imported here: --help needs no scikit-learn

    rows, summary = suggest_module.suggest_command(store, backbone, method, budget, out, seed, strategy, data_root,
                                                   **params)
    print(summary)
    if html:
        from classify.labeling.nextsteps import suggest_steps

        intro = (f'<p>Ranked by score, rank 1 first: label from the top when there is no time for all. The score '
                 f'({esc(strategy)}): {esc(SCORES[strategy])}. Each caption names the class the method predicts '
                 f'(often wrong for exactly these images); the reason column of {esc(Path(out).name)} says why each '
                 'image was chosen.</p>')
        after = steps("What to do next", suggest_steps(store, out, budget, data_root))
        sheet = write_sheet("Images to label next", f"{len(rows)} suggestions from {store} ({method}, {strategy})",
                            suggest_module.sheet_groups(rows), out, intro, after)
        print(f"wrote {sheet} (open it in a browser)")


def audit(store: str, backbone: str | None = None, method: str = "auto", out: str = "suspects.csv",
          folds: int = 5, seed: int = 0, all_rows: bool = False, html: bool = True, data_root: str | None = None,
          **params) -> None:
    """Labeled images that look wrongly labeled: out-of-fold probabilities ranked by cleanlab's label quality.

    Parameters
    ----------
    store : str
        The feature store (.h5) written by `python -m embed run`.
    backbone : str
        Backbone spec in the store (default: the store's only backbone).
    method : str
        The method giving the out-of-fold probabilities (default auto: the probe, or the semi-supervised method that
        beats it in cross-validation on the labels).
    out : str
        The CSV to write: rank, id, path, given, suggested, label_quality, is_label_issue, lowest label quality first.
        label_quality is cleanlab's self-confidence: the out-of-fold probability of the given label (lower = worse).
        is_label_issue marks the n lowest, n the number of labels that another class leads by at least as much as
        the model typically leads with the labels it agrees with (and by 0.1 or more); nothing is flagged when the
        model agrees with under half of the given labels (too weak to judge: the command and the page say so).
    folds : int
        Stratified folds over the labeled images (each class needs at least 2 labels).
    seed : int
        Seeds the folds.
    all_rows : bool
        Write every labeled image, ranked, instead of only the flagged ones.
    html : bool
        Also write OUT with .html: the flagged images' thumbnails in rank order with given and suggested labels,
        what the numbers mean and what to do next.
    data_root : str
        The folder holding the images, when it moved since `python -m embed run` (default: the data folder the
        store records).
    **params
        The method's parameters.

    Examples
    --------
    python -m classify audit --store feats.h5 --out suspects.csv
    python -m classify audit --store feats.h5 --method linear --folds 3 --all-rows
    """
    check_flags(dict(folds=folds, seed=seed, all_rows=all_rows, html=html), FLAGS)
    out = check_outputs(out, store, html)
    from classify.labeling import audit as audit_module  # imported here: --help needs no scikit-learn

    rows, notes = audit_module.audit_command(store, backbone, method, out, folds, seed, all_rows, data_root,
                                             **params)
    print("\n".join(notes))
    if html:
        from classify.labeling.nextsteps import audit_steps

        intro = "".join(f'<p class="{"caution" if note.startswith("caution") else "meta"}">{esc(note)}</p>'
                        for note in notes)  # the page says what the command line says, the caution included
        intro += ("<p>label_quality is cleanlab's self-confidence: the probability of the given label from a model "
                  "that did not see it (out-of-fold), lower = worse. Lowest first; the flagged labels "
                  "(is_label_issue) are the top of the ranking, as many as the labels another class clearly leads."
                  "</p>")
        after = steps("What to do next", audit_steps(store, out, data_root))
        sheet = write_sheet("Labels that look wrong", f"{len(rows)} labeled images of {store} ({method})",
                            audit_module.sheet_groups(rows), out, intro, after)
        print(f"wrote {sheet} (open it in a browser)")
