"""What every layer shares: the error tree, settings, value types, the model table, prices.

::

    errors.py       the one error tree, drawn in its docstring: retry, or record and move on
    settings.py     Settings (pydantic-settings, ``QWBATCH_*``), loaded once at the edge
    types.py        value objects that cross packages: RenderRequest, ProviderResult,
                    CatalogRecord, PlanItem, Alias, Mode, Status
    model_table.py  ModelTable: each model's endpoint, limits, size rule and price
                    (``qwbatch/data/models.toml``)
    keys.py         RequestFields (what a key covers), a request's canonical form, its
                    ``request_key`` and derived seeds
    costs.py        PriceTable, money arithmetic and estimates (one reader of prices)
    uris.py         URIs as recorded: no credentials, no presigned queries
    arrow_text.py   Arrow string columns as bytes, without a Python string per value
    images.py       Pillow: output checks, thumbnails, edit-input checks and normalisation
    fonts.py        caption fonts that draw CJK
    stop.py         clean stop on SIGINT/SIGTERM (STOP, Guard)
    version.py      ``__version__``

The names other packages use are re-exported here and imported on first use, so importing
``qwbatch.core.errors`` alone does not pull in Pillow, pyarrow or pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwbatch.core.arrow_text import text_of as text_of
    from qwbatch.core.costs import MONEY_PLACES as MONEY_PLACES
    from qwbatch.core.costs import UNTAGGED as UNTAGGED
    from qwbatch.core.costs import ZERO as ZERO
    from qwbatch.core.costs import CostLine as CostLine
    from qwbatch.core.costs import Estimate as Estimate
    from qwbatch.core.costs import PriceTable as PriceTable
    from qwbatch.core.costs import as_float as as_float
    from qwbatch.core.costs import estimate as estimate
    from qwbatch.core.costs import format_money as format_money
    from qwbatch.core.costs import money as money
    from qwbatch.core.costs import tag_label as tag_label
    from qwbatch.core.errors import AmbiguousError as AmbiguousError
    from qwbatch.core.errors import BudgetExceededError as BudgetExceededError
    from qwbatch.core.errors import ConfigError as ConfigError
    from qwbatch.core.errors import ImageError as ImageError
    from qwbatch.core.errors import InputError as InputError
    from qwbatch.core.errors import InputTransientError as InputTransientError
    from qwbatch.core.errors import JournalError as JournalError
    from qwbatch.core.errors import ManifestError as ManifestError
    from qwbatch.core.errors import ModerationError as ModerationError
    from qwbatch.core.errors import ObjectNotFoundError as ObjectNotFoundError
    from qwbatch.core.errors import PermanentError as PermanentError
    from qwbatch.core.errors import PlanHelperError as PlanHelperError
    from qwbatch.core.errors import ProviderAmbiguousError as ProviderAmbiguousError
    from qwbatch.core.errors import ProviderError as ProviderError
    from qwbatch.core.errors import ProviderTransientError as ProviderTransientError
    from qwbatch.core.errors import QwBatchError as QwBatchError
    from qwbatch.core.errors import ResultExpiredError as ResultExpiredError
    from qwbatch.core.errors import ShardRunError as ShardRunError
    from qwbatch.core.errors import StorageError as StorageError
    from qwbatch.core.errors import StorageTransientError as StorageTransientError
    from qwbatch.core.errors import TaskDeadlineError as TaskDeadlineError
    from qwbatch.core.errors import TextReadError as TextReadError
    from qwbatch.core.errors import ThrottledError as ThrottledError
    from qwbatch.core.errors import TransientError as TransientError
    from qwbatch.core.fonts import Font as Font
    from qwbatch.core.fonts import caption_font as caption_font
    from qwbatch.core.keys import KEY_VERSION as KEY_VERSION
    from qwbatch.core.keys import SEED_MAX as SEED_MAX
    from qwbatch.core.keys import RequestFields as RequestFields
    from qwbatch.core.keys import key_and_seed as key_and_seed
    from qwbatch.core.model_table import ModelSpec as ModelSpec
    from qwbatch.core.model_table import ModelTable as ModelTable
    from qwbatch.core.model_table import parse_size as parse_size
    from qwbatch.core.settings import Settings as Settings
    from qwbatch.core.settings import settings_with as settings_with
    from qwbatch.core.stop import STOP as STOP
    from qwbatch.core.stop import Guard as Guard
    from qwbatch.core.stop import StopSignal as StopSignal
    from qwbatch.core.stop import cancel_when_stopped as cancel_when_stopped
    from qwbatch.core.types import Alias as Alias
    from qwbatch.core.types import CatalogRecord as CatalogRecord
    from qwbatch.core.types import Mode as Mode
    from qwbatch.core.types import PlanItem as PlanItem
    from qwbatch.core.types import ProviderImage as ProviderImage
    from qwbatch.core.types import ProviderResult as ProviderResult
    from qwbatch.core.types import RenderRequest as RenderRequest
    from qwbatch.core.types import Status as Status
    from qwbatch.core.uris import recorded_uri as recorded_uri
    from qwbatch.core.uris import url_without_secrets as url_without_secrets
    from qwbatch.core.version import __version__ as __version__

#: Each re-exported name → the module that defines it.
_HOME: dict[str, str] = {
    "text_of": "arrow_text",
    "CostLine": "costs",
    "Estimate": "costs",
    "MONEY_PLACES": "costs",
    "PriceTable": "costs",
    "UNTAGGED": "costs",
    "ZERO": "costs",
    "as_float": "costs",
    "estimate": "costs",
    "format_money": "costs",
    "money": "costs",
    "tag_label": "costs",
    "AmbiguousError": "errors",
    "BudgetExceededError": "errors",
    "ConfigError": "errors",
    "ImageError": "errors",
    "TextReadError": "errors",
    "InputError": "errors",
    "InputTransientError": "errors",
    "JournalError": "errors",
    "ManifestError": "errors",
    "ModerationError": "errors",
    "ObjectNotFoundError": "errors",
    "PermanentError": "errors",
    "PlanHelperError": "errors",
    "ProviderAmbiguousError": "errors",
    "ProviderError": "errors",
    "ProviderTransientError": "errors",
    "QwBatchError": "errors",
    "ResultExpiredError": "errors",
    "ShardRunError": "errors",
    "StorageError": "errors",
    "StorageTransientError": "errors",
    "TaskDeadlineError": "errors",
    "ThrottledError": "errors",
    "TransientError": "errors",
    "Font": "fonts",
    "caption_font": "fonts",
    "KEY_VERSION": "keys",
    "SEED_MAX": "keys",
    "key_and_seed": "keys",
    "RequestFields": "keys",
    "ModelSpec": "model_table",
    "ModelTable": "model_table",
    "parse_size": "model_table",
    "Settings": "settings",
    "settings_with": "settings",
    "Guard": "stop",
    "STOP": "stop",
    "StopSignal": "stop",
    "cancel_when_stopped": "stop",
    "Alias": "types",
    "CatalogRecord": "types",
    "Mode": "types",
    "PlanItem": "types",
    "ProviderImage": "types",
    "ProviderResult": "types",
    "RenderRequest": "types",
    "Status": "types",
    "recorded_uri": "uris",
    "url_without_secrets": "uris",
    "__version__": "version",
}

__all__ = [
    "KEY_VERSION",
    "MONEY_PLACES",
    "SEED_MAX",
    "STOP",
    "UNTAGGED",
    "ZERO",
    "Alias",
    "AmbiguousError",
    "BudgetExceededError",
    "CatalogRecord",
    "ConfigError",
    "CostLine",
    "Estimate",
    "Font",
    "Guard",
    "ImageError",
    "InputError",
    "InputTransientError",
    "JournalError",
    "ManifestError",
    "Mode",
    "ModelSpec",
    "ModelTable",
    "ModerationError",
    "ObjectNotFoundError",
    "PermanentError",
    "PlanHelperError",
    "PlanItem",
    "PriceTable",
    "ProviderAmbiguousError",
    "ProviderError",
    "ProviderImage",
    "ProviderResult",
    "ProviderTransientError",
    "QwBatchError",
    "RenderRequest",
    "RequestFields",
    "ResultExpiredError",
    "Settings",
    "ShardRunError",
    "Status",
    "StopSignal",
    "StorageError",
    "StorageTransientError",
    "TaskDeadlineError",
    "TextReadError",
    "ThrottledError",
    "TransientError",
    "__version__",
    "as_float",
    "cancel_when_stopped",
    "caption_font",
    "estimate",
    "format_money",
    "key_and_seed",
    "money",
    "parse_size",
    "recorded_uri",
    "settings_with",
    "tag_label",
    "text_of",
    "url_without_secrets",
]


def __getattr__(name: str) -> object:
    """A re-exported name, its module imported on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
