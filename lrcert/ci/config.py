"""``lrcert check``'s settings: named checks in ``pyproject.toml`` (``[tool.lrcert.checks.NAME]``)
or in ``lrcert.toml`` (``[checks.NAME]``), keys in kebab-case as ruff and black spell theirs,
paths relative to the config file. Keys set beside ``checks`` (``[tool.lrcert]``) are every
check's defaults.

    [tool.lrcert.checks.mnist]
    model = "models/mnist.onnx"
    data = "data/mnist_test_100.npy"
    norms = ["l2", "linf"]
    min-radius = {l2 = 1e-4}           # or a number for every norm
    min-certified = 1e-5
    baseline = "baselines/mnist.json"  # a certify --format json run; lrcert check --update-baseline writes it
    max-drop = "10%"                   # or {l2 = "10%"}; of the median, or of max-drop-on = "min" | "p25"
    stability = {eps = "8/255", max-distortion = 50, max-bound = 400}  # lrcert stability's ceilings

Every problem names the file, the table and the key, in one line.

>>> spec = parse({"checks": {"a": {"model": "m.onnx", "data": "d.npy", "min-radius": {"l2": 0.5}}}},
...              Path("lrcert.toml"), "", check_files=False)[0]
>>> spec.name, spec.norms, spec.min_radius
('a', ('l1', 'l2', 'linf'), {'l2': 0.5})
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LrcertError
from . import limits

#: What a check (or ``[tool.lrcert]`` for every check) may set; model, data and baseline only a check.
KEYS = {"model", "data", "key", "norms", "min-radius", "min-certified", "baseline", "max-drop", "max-drop-on",
        "device", "dtype", "batch-size", "guarantee", "seed", "columns", "resize", "center-crop", "normalize", "box", "vary", "classes", "label-column",
        "stability"}
#: What a check's ``stability`` table may set (lrcert stability's options, and its two ceilings).
STABILITY_KEYS = {"eps", "norm", "max-distortion", "max-bound", "samples", "budget", "target", "distortion-norm", "relative"}
PER_CHECK = {"model", "data", "key", "baseline"}
FIGURES = ("min", "p25", "median")


@dataclass
class Check:
    """One named check: a model, its data, and what they must show."""

    name: str
    source: Path  # the config file
    model: Path
    data: Path
    key: str | None = None
    norms: tuple[str, ...] = limits.NORMS
    min_radius: dict[str, float] = field(default_factory=dict)
    min_certified: dict[str, float] = field(default_factory=dict)
    baseline: Path | None = None
    max_drop: dict[str, float] = field(default_factory=dict)
    max_drop_on: str = "median"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    guarantee: str | float = 1e-12
    seed: int = 0
    columns: str | None = None  # as certify's options: a table's features,
    resize: tuple[int, ...] | None = None  # an image folder's Resize and CenterCrop,
    center_crop: tuple[int, ...] | None = None
    normalization: tuple | None = None  # (mean, std) folded in,
    box: str | None = None  # the box ("0,1", "none"; None: certify's default),
    vary: tuple[str, ...] | None = None  # the inputs certified along,
    classes: list[str] | None = None  # the model's class names in output order,
    label_column: str | None = None  # a table's column of labels
    stability: "StabilityCheck | None" = None  # lrcert stability's ceilings, where the check has them

    @property
    def certifies(self) -> bool:
        """Whether the check has anything of certify's to judge (floors, a baseline)."""
        return bool(self.min_radius or self.min_certified or self.max_drop or self.baseline)


@dataclass
class StabilityCheck:
    """A check's ``stability`` table: the ball, the analysis, and the ceilings on the distortion the
    search finds (``max-distortion``) and on the certified bound (``max-bound``)."""

    eps: float
    eps_text: str
    norm: str = "linf"
    max_distortion: float | None = None
    max_bound: float | None = None
    samples: int = 1000
    budget: int = 400
    target: str | int = "predicted"
    distortion_norm: str = "1"
    relative: bool = False


def find(start: Path) -> Path:
    """The config file that applies in ``start``: the nearest ``lrcert.toml``, or ``pyproject.toml``
    with a ``[tool.lrcert]`` table, in ``start`` or a folder above."""
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / "lrcert.toml").is_file():
            return folder / "lrcert.toml"
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "lrcert" in (_read(pyproject).get("tool") or {}):
            return pyproject
    raise LrcertError(f"no lrcert.toml, and no pyproject.toml with a [tool.lrcert] table, in {start} or above",
                      fix="add [tool.lrcert.checks.NAME] tables to pyproject.toml (see docs/guides/ci.md), or give --config")


def load(path: Path) -> list[Check]:
    """Every check of config file ``path`` (an ``lrcert.toml``, or a ``pyproject.toml``)."""
    if not path.is_file():
        raise LrcertError(f"config file {str(path)!r} does not exist", fix="give an lrcert.toml or a pyproject.toml")
    table, prefix = _read(path), ""
    if path.name == "pyproject.toml" or "tool" in table:
        table, prefix = (table.get("tool") or {}).get("lrcert"), "tool.lrcert."
        if table is None:
            raise LrcertError(f"{path} has no [tool.lrcert] table", fix="add [tool.lrcert.checks.NAME] tables")
    return parse(table, path, prefix)


def _read(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, ValueError) as problem:
        raise LrcertError(f"{path} is not valid TOML: {problem}", fix="correct the file") from None


def parse(table: dict, path: Path, prefix: str, check_files: bool = True) -> list[Check]:
    """The checks of ``table`` (the ``[tool.lrcert]`` or ``lrcert.toml`` contents) read from ``path``."""
    where = f"{path}: [{prefix.rstrip('.') or 'top level'}]"
    defaults = {k: v for k, v in table.items() if k != "checks"}
    _known(defaults, KEYS - PER_CHECK, where)
    checks = table.get("checks")
    if not isinstance(checks, dict) or not checks:
        raise LrcertError(f"{path} names no checks", fix=f"add a [{prefix}checks.NAME] table with model and data")
    out = []
    for name, settings in checks.items():
        here = f"{path}: [{prefix}checks.{name}]"
        if not isinstance(settings, dict):
            raise LrcertError(f"{here} is not a table", fix=f"write [{prefix}checks.{name}] with model = … and data = …")
        _known(settings, KEYS, here)
        merged = defaults | settings
        out.append(_check(name, merged, path, here, check_files))
    return out


def _known(settings: dict, allowed: set[str], where: str) -> None:
    for key in settings:
        if key not in allowed:
            close = [k for k in sorted(allowed) if k.replace("-", "_") == key.replace("-", "_")]
            fix = f"write {close[0]}" if close else f"use one of {', '.join(sorted(allowed))}"
            raise LrcertError(f"{where} has an unknown key {key!r}", fix=fix)


def _check(name: str, settings: dict, path: Path, here: str, check_files: bool) -> Check:
    folder = path.parent

    def problem(key: str, what: str, fix: str) -> LrcertError:
        return LrcertError(f"{here} {key}: {what}", fix=fix)

    def file(key: str, required: bool) -> Path | None:
        value = settings.get(key)
        if value is None:
            if required:
                raise problem(key, "is missing", f"add {key} = \"path\" (relative to {path.name})")
            return None
        if not isinstance(value, str):
            raise problem(key, f"{value!r} is not a path", "write it as a string")
        return folder / value

    def rewrap(key: str, parse):
        try:
            return parse()
        except LrcertError as error:
            raise problem(key, in_config_terms(error.problem), in_config_terms(error.fix or "correct it")) from None

    norms = rewrap("norms", lambda: limits.norms(_strings(settings.get("norms")), "norms ="))
    check = Check(name, path, file("model", True), file("data", True), key=settings.get("key"), norms=norms,
                  baseline=file("baseline", False))
    check.min_radius = rewrap("min-radius", lambda: limits.radii(_per_norm(settings.get("min-radius")), norms, "", "norms"))
    check.min_certified = rewrap("min-certified",
                                 lambda: limits.radii(_per_norm(settings.get("min-certified")), norms, "", "norms"))
    check.max_drop = rewrap("max-drop", lambda: limits.drops(_per_norm(settings.get("max-drop")), norms, "", "norms"))
    if check.max_drop and check.baseline is None:
        raise problem("max-drop", "limits a drop from a baseline, but the check names none",
                      "add baseline = \"results.json\" (lrcert check --update-baseline writes it)")
    if "stability" in settings:
        check.stability = _stability(settings["stability"], problem)
    if not (check.min_radius or check.min_certified or check.max_drop or check.stability):
        raise problem("min-radius", "is missing, as are min-certified, max-drop and stability: the check could never fail",
                      'add a floor (min-radius = 1e-6, min-certified = …), a limit on drops from a baseline '
                      '(baseline = "baselines/NAME.json" and max-drop = "10%"), or stability ceilings '
                      '(stability = {eps = "8/255", max-distortion = 50})')
    check.max_drop_on = _choice(settings, "max-drop-on", FIGURES, "median", problem)
    check.device = _choice(settings, "device", ("auto", "cpu", "cuda"), "auto", problem, prefix_ok=True)
    check.dtype = _choice(settings, "dtype", ("auto", "float32", "float64"), "auto", problem)
    batch = settings.get("batch-size")
    if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        raise problem("batch-size", f"{batch!r} is not a positive whole number", "write e.g. batch-size = 64")
    check.batch_size = batch
    check.guarantee = rewrap("guarantee", lambda: limits.guarantee(str(settings.get("guarantee", "1e-12")), "guarantee ="))
    seed = settings.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise problem("seed", f"{seed!r} is not a whole number", "write e.g. seed = 0")
    check.seed = seed
    _data_options(check, settings, rewrap, problem, check_files)
    if check_files:
        for key, target in (("model", check.model), ("data", check.data)):
            if not target.exists():
                raise problem(key, f"{target} does not exist", f"correct the path (relative to {path.name})")
    return check


def _stability(table, problem) -> StabilityCheck:
    """A check's ``stability`` table, read as ``lrcert stability`` reads its options."""
    from ..stability import parse_eps, parse_norm

    if not isinstance(table, dict):
        raise problem("stability", f"{table!r} is not a table", 'write stability = {eps = "8/255", max-distortion = 50}')
    unknown = sorted(set(table) - STABILITY_KEYS)
    if unknown:
        raise problem("stability", f"has an unknown key {unknown[0]!r}", f"use one of {', '.join(sorted(STABILITY_KEYS))}")
    if "eps" not in table:
        raise problem("stability", "has no eps", 'add eps = "8/255" (the ball\'s radius) to the stability table')
    if "max-distortion" not in table and "max-bound" not in table:
        raise problem("stability", "has neither max-distortion nor max-bound: it could never fail",
                      "add max-distortion = X (a ceiling on the distortion found) or max-bound = X")

    def wrapped(key: str, read):
        try:
            return read()
        except LrcertError as error:
            raise problem(f"stability's {key}", in_config_terms(error.problem.replace(f"--{key} ", "")),
                          in_config_terms(error.fix or "correct it")) from None

    found = StabilityCheck(wrapped("eps", lambda: parse_eps(table["eps"], "eps =")), str(table["eps"]),
                           wrapped("norm", lambda: parse_norm(str(table.get("norm", "inf")), "norm =")))
    for key in ("max-distortion", "max-bound"):
        value = table.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf):
            raise problem(f"stability's {key}", f"{value!r} is not a number ≥ 0", f"write {key} = 50")
        setattr(found, key.replace("-", "_"), None if value is None else float(value))
    for key in ("samples", "budget"):
        value = table.get(key, getattr(found, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "samples" else 2):
            raise problem(f"stability's {key}", f"{value!r} is not a whole number ≥ {1 if key == 'samples' else 2}",
                          f"write {key} = {getattr(found, key)}")
        setattr(found, key, value)
    found.target = table.get("target", "predicted")
    found.distortion_norm = str(table.get("distortion-norm", "1"))
    found.relative = bool(table.get("relative", False))
    return found


def _data_options(check: Check, settings: dict, rewrap, problem, check_files: bool = True) -> None:
    """columns, resize, center-crop, normalize, box and vary, as certify's options take them:
    ``columns = ["a", "b"]``, ``resize = 256`` or ``[224, 160]``, ``normalize = "imagenet"`` or
    ``{mean = […], std = […]}``, ``box = [0, 1]`` or ``"none"``, ``vary = ["latent"]``."""
    from ..data import sources
    from ..run import box

    joined = lambda value: ",".join(map(str, value)) if isinstance(value, list) else str(value)  # noqa: E731
    if "columns" in settings:
        check.columns = joined(settings["columns"])
    for key in ("resize", "center-crop"):
        if key in settings:
            setattr(check, key.replace("-", "_"), rewrap(key, lambda: sources.sizes(joined(settings[key]), f"{key} =")))
    value = settings.get("normalize")
    if isinstance(value, dict) and set(value) == {"mean", "std"}:
        check.normalization = rewrap("normalize", lambda: sources.normalization(joined(value["mean"]), joined(value["std"]), None))
    elif isinstance(value, str):
        check.normalization = rewrap("normalize", lambda: sources.normalization(None, None, value))
    elif value is not None:
        raise problem("normalize", f"{value!r} is neither a preset nor {{mean = […], std = […]}}",
                      'write normalize = "imagenet" or normalize = {mean = [0.5], std = [0.25]}')
    if "box" in settings:
        check.box = joined(settings["box"])
        rewrap("box", lambda: box.parse(check.box))
    if "vary" in settings:
        check.vary = tuple(_strings(settings["vary"]))
    value = settings.get("classes")
    if isinstance(value, str):  # (a file of names, relative to the config file, or names with commas)
        named = check.source.parent / value
        if "," not in value and not named.is_file():
            if check_files:
                raise problem("classes", f"{named} does not exist", 'name a file of class names (relative to the '
                              'config file), or list them: classes = ["cat", "dog"]')
        else:
            check.classes = rewrap("classes", lambda: sources.class_names(str(named) if named.is_file() else value))
    elif isinstance(value, list):
        check.classes = rewrap("classes", lambda: sources.class_names(",".join(map(str, value))))
    elif value is not None:
        raise problem("classes", f"{value!r} is neither a list of names nor a file", 'write classes = ["cat", "dog"] or classes = "classes.txt"')
    if "label-column" in settings:
        check.label_column = str(settings["label-column"])


def in_config_terms(text: str) -> str:
    """A message about certify's options in the config's terms: its keys, not command-line flags.

    >>> in_config_terms("--normalize 'x' is not a known preset. Fix: use imagenet, or --mean and --std")
    "normalize 'x' is not a known preset. Fix: use imagenet, or normalize = {mean = […], std = […]}"
    """
    text = text.replace("--mean and --std", "normalize = {mean = […], std = […]}").replace("--normalize imagenet", 'normalize = "imagenet"')
    text = text.replace("--mean/--std/--normalize", "normalize").replace("--mean/--std", "normalize")

    def key(match) -> str:
        name = match.group(1)
        if name in ("mean", "std"):
            return f"normalize's {name}"
        return "norms" if name in ("p", "norm") else name if name in KEYS else match.group(0)

    return re.sub(r"--([a-z][a-z-]*)", key, text)


def _strings(value) -> list[str] | None:
    """``norms``: a list (of names or numbers) or one string."""
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _per_norm(value) -> list[str] | None:
    """A number (or ``"10%"``) for every norm, or a table ``{l2 = …}``: as the command line writes them."""
    if value is None:
        return None
    if isinstance(value, dict):
        return [f"{norm}={amount}" for norm, amount in value.items()]
    return [str(value)]


def _choice(settings: dict, key: str, allowed: tuple[str, ...], default: str, problem, prefix_ok: bool = False) -> str:
    value = settings.get(key, default)
    if not isinstance(value, str) or not (value in allowed or prefix_ok and value.startswith("cuda:")):
        raise problem(key, f"{value!r} is not one of {', '.join(allowed)}", f"write {key} = \"{allowed[0]}\"")
    return value
