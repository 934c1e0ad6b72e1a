"""Built-in methods; importing this package registers each of them (one module per method)."""
from classify.methods import zeroshot  # noqa: F401
from classify.methods import linear  # noqa: F401
from classify.methods import knn  # noqa: F401
from classify.methods import ensemble  # noqa: F401
from classify.methods import moe  # noqa: F401
from classify.methods import labelprop  # noqa: F401
from classify.methods import selftrain  # noqa: F401
from classify.methods import tip  # noqa: F401
from classify.methods import crossmodal  # noqa: F401
from classify.methods import coop  # noqa: F401
from classify.methods import conse  # noqa: F401
from classify.methods import fixmatch  # noqa: F401
from classify.methods import ptmap  # noqa: F401
from classify.methods import auto  # noqa: F401
