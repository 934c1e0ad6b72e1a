"""Built-in methods; importing this package registers each of them (one module per method)."""
from classify.methods import zeroshot  # noqa: F401
from classify.methods import linear  # noqa: F401
from classify.methods import knn  # noqa: F401
from classify.methods import ensemble  # noqa: F401
from classify.methods import moe  # noqa: F401
