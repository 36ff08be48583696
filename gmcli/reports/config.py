"""The ``report:`` section of a recipe, and the options of ``gmcli report``.

The first run's recipe gives the defaults, command-line flags override them
(:func:`resolve_config`); errors name the recipe key or the flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gmcli.detectors.config import SCORE_NAMES
from gmcli.errors import GmcliError

FORMATS: tuple[str, ...] = ("html", "md", "json")


class ReportConfig(BaseModel):
    """What a report shows and where it goes.

    Attributes:
        out: the output folder; None: ``<first run>/report``.
        formats: the files to write: ``html`` (one self-contained page, images
            embedded), ``md`` (Markdown with PNG files beside it), ``json``
            (``report.json``). PNG files are written with ``md``.
        compare: further runs shown beside the recipe's run by ``gmcli run``
            (for instance its softmax twin); ``gmcli report`` takes runs as
            arguments instead.
        scores: the detection scores drawn in ROC and figure plots; None: every
            score the detection results hold. Tables always list every score.
        projection: the feature-space picture: ``auto`` (the features themselves
            when D = 2, else PCA), ``pca`` or ``tsne`` (slow for many points).
        split: the data split whose features are drawn.
        max_points: at most this many inputs in the feature-space picture.
        hist_bins: bins of the score histograms.
        dpi: resolution of the PNG figures.
        title: the page title; None: built from the run names.
    """

    model_config = ConfigDict(extra="forbid")

    out: str | None = None
    formats: list[Literal["html", "md", "json"]] = Field(
        default_factory=lambda: list(FORMATS), min_length=1
    )
    compare: list[str] = Field(default_factory=list)
    scores: list[str] | None = Field(default=None, min_length=1)
    projection: Literal["auto", "pca", "tsne"] = "auto"
    split: Literal["train", "val", "test"] = "test"
    max_points: int = Field(default=2000, ge=50, le=100_000)
    hist_bins: int = Field(default=40, ge=5, le=500)
    dpi: int = Field(default=110, ge=50, le=400)
    title: str | None = Field(default=None, max_length=200)

    @field_validator("formats", mode="before")
    @classmethod
    def _formats_list(cls, value: Any) -> Any:
        # Accept the CLI's comma-separated text as well as a list.
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("formats")
    @classmethod
    def _unique_formats(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("scores")
    @classmethod
    def _known_scores(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for name in value:
            if name not in SCORE_NAMES:
                raise ValueError(f"unknown score {name!r}; known: {', '.join(SCORE_NAMES)}")
        return list(dict.fromkeys(value))


# The command-line flag behind each field, to name it in error messages.
FLAGS: dict[str, str] = {
    "out": "--out",
    "formats": "--format",
    "scores": "--score",
    "projection": "--projection",
    "split": "--split",
    "max_points": "--max-points",
    "hist_bins": "--bins",
    "dpi": "--dpi",
    "title": "--title",
}


def _one_line(exc: ValidationError, values: Mapping[str, Any], flags: set[str]) -> str:
    """The first validation error as ``<flag or recipe key>: <message>, got <value>``."""
    err = exc.errors()[0]
    key = str(err["loc"][0]) if err["loc"] else ""
    where = FLAGS.get(key, key) if key in flags else f"recipe key report.{key}"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key; accepted keys: {', '.join(ReportConfig.model_fields)}"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        message = message.replace("Input should be", "expected")
    if key in values and "got" not in message:
        message += f", got {values[key]!r}"
    return f"{where}: {message}"


def resolve_config(
    recipe: Mapping[str, Any] | BaseModel | None = None, overrides: Mapping[str, Any] | None = None
) -> ReportConfig:
    """The options of one report: the recipe's ``report:`` section, then the flags.

    Args:
        recipe: the ``report`` mapping of a recipe (or a ReportConfig, or None).
        overrides: values given on the command line; ``None`` values mean
            "not given" and are dropped.

    Raises:
        GmcliError: one line naming the recipe key or the flag that is wrong.
    """
    if isinstance(recipe, BaseModel):
        recipe = recipe.model_dump()
    if recipe is not None and not isinstance(recipe, Mapping):
        raise GmcliError(f"recipe key report: expected a mapping, got {type(recipe).__name__}")
    base: dict[str, Any] = dict(recipe or {})
    try:
        ReportConfig.model_validate(base)
    except ValidationError as exc:
        raise GmcliError(_one_line(exc, base, set())) from None

    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return ReportConfig.model_validate({**base, **given})
    except ValidationError as exc:
        raise GmcliError(_one_line(exc, {**base, **given}, set(given))) from None
