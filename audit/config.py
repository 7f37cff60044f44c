"""The audit configuration: one typed, validated YAML file.

Why pydantic with ``extra="forbid"``: a misspelt key (``treshold``) silently ignored is an audit that
quietly ran with defaults; every unknown key and wrong type is an error that names the key.
Relative paths are resolved against the config file's folder, so a config travels with its data.
"""

from __future__ import annotations

import importlib.util
from itertools import pairwise
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(_Strict):
    """Where the classifier comes from.

    ``torchvision``: an architecture name from ``torchvision.models`` plus a ``state_dict`` checkpoint
    (loaded with ``weights_only=True``: never unpickle untrusted files). ``torchscript``: a file from
    ``torch.jit.save`` (scripted or traced). ``onnx``: the ``.onnx`` file that ships, run by onnxruntime.
    ``factory``: ``file.py:function`` or ``package.module:function`` returning an ``nn.Module`` (the
    team's own model code, trusted as such), with an optional ``state_dict`` checkpoint.
    """

    kind: Literal["torchvision", "torchscript", "onnx", "factory"] = "torchvision"
    arch: str | None = None
    factory: str | None = None
    checkpoint: Path | None = None
    num_classes: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _required_per_kind(self) -> ModelSource:
        if self.kind == "torchvision" and not self.arch:
            raise ValueError("model.arch is required when model.kind is 'torchvision'")
        if self.kind == "factory":
            if not self.factory or ":" not in self.factory:
                raise ValueError("model.factory must be 'path/to/file.py:function' or 'package.module:function'")
        elif self.checkpoint is None:
            raise ValueError(f"model.checkpoint is required when model.kind is {self.kind!r}")
        return self

    @property
    def identity_file(self) -> Path:
        """The file whose SHA-256 identifies the model: the checkpoint, else the factory's source file
        (``file.py`` itself, or the file that ``package.module`` is imported from)."""
        if self.checkpoint is not None:
            return self.checkpoint
        target = (self.factory or "").rsplit(":", 1)[0]
        if target.endswith(".py"):
            return Path(target)
        spec = importlib.util.find_spec(target)
        if spec is None or spec.origin is None:
            raise ValueError(f"model.factory: module {target!r} has no source file to identify the model by")
        return Path(spec.origin)


class Intensity(_Strict):
    """How stored pixel values become [0, 1] before the model's normalisation.

    ``auto``: 8-bit and 16-bit rasters are divided by their type's maximum (255, 65535); float rasters
    and DICOM without a window are min-max scaled per image; DICOM with a VOI LUT or window in the file
    gets it applied (pydicom's modality LUT, then VOI LUT / window, then MONOCHROME1 inverted so bright
    means dense everywhere). ``dtype``: divide by the stored type's maximum (DICOM: ``2**BitsStored - 1``
    after the modality LUT's shift to zero). ``minmax``: per-image min-max. ``window``: the given
    ``[centre, width]`` (DICOM: in modality units, e.g. HU; rasters: in stored values), overriding the
    file's own window.
    """

    mode: Literal["auto", "dtype", "minmax", "window"] = "auto"
    window: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _window_given(self) -> Intensity:
        if (self.mode == "window") != (self.window is not None):
            raise ValueError("preprocessing.intensity.window [centre, width] goes with mode 'window' (and only it)")
        if self.window is not None and self.window[1] <= 0:
            raise ValueError("preprocessing.intensity.window: width must be > 0")
        return self


class Preprocessing(_Strict):
    """How an image becomes the model's input tensor: decode, scale to [0, 1] (``intensity``), convert
    to ``channels`` (grey to RGB by repetition, RGB to grey by ITU-R 601 luma; alpha dropped, palette
    and CMYK converted by Pillow), resize bilinearly to ``size`` ([height, width]), normalise."""

    size: tuple[PositiveInt, PositiveInt] = (224, 224)
    channels: Literal[1, 3] = 3
    intensity: Intensity = Intensity()
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    @model_validator(mode="after")
    def _per_channel(self) -> Preprocessing:
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.channels:
                raise ValueError(f"preprocessing.{name} needs {self.channels} values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("preprocessing.std values must be > 0")
        return self


class Smoothing(_Strict):
    """SmoothGrad-style averaging over ``n`` noisy copies (0 = off); noise sd = sigma * input range."""

    n: int = Field(default=0, ge=0)
    sigma: float = Field(default=0.15, ge=0)
    seed: int = 0


class Explain(_Strict):
    """What to explain and where.

    ``target``: ``predicted`` (default: explaining a fixed class for images of another class puts the
    map on that class's evidence, not on the lesion, and reads as false spurious focus), ``label``
    (the manifest's class), or a class name. ``target_layer``: a module name, ``auto`` (the last
    spatial feature map before pooling), or a list of names whose maps are fused. ``output``:
    ``softmax`` for single-label models; ``sigmoid`` for multi-label ones (e.g. chest X-ray findings),
    where each manifest row is one (image, finding) pair with that finding's mask, explained against it.
    ``threads``: torch's intra-op threads in each worker (None: torch's default, the machine's cores;
    Dask workers start with 1). The thread count changes floating-point summation order, so pin it
    (e.g. 1) when runs on different runners or machines must agree bit for bit. ``backend``: the runtime
    that runs the model. ``auto`` (default): on CPU, a torch model is exported once to ONNX (cached by
    its SHA-256) and run by onnxruntime when its maps on a probe batch equal the torch path's within
    1e-4 of their peak, else torch with the reason recorded; on a GPU, torch. ``torch`` or ``onnx``
    force one (``onnx`` fails, naming why, where the check does not pass). The backend changes
    rounding (maps agree to ~1e-6), so runs that must agree bit for bit pin it too.
    """

    method: Literal["gradcam", "hirescam", "gradcam++", "layercam", "scorecam", "guided-backprop", "guided-gradcam"] = (
        "gradcam"
    )
    target: str = "predicted"
    target_layer: str | tuple[str, ...] = "auto"
    output: Literal["softmax", "sigmoid"] = "softmax"
    smooth: Smoothing = Smoothing()
    batch_size: int = Field(default=32, ge=1)
    shard_size: int = Field(default=128, ge=1)
    device: str = "cpu"
    threads: int | None = Field(default=None, ge=1)
    backend: Literal["auto", "torch", "onnx"] = "auto"

    @model_validator(mode="after")
    def _multilabel_explains_the_finding(self) -> Explain:
        if self.output == "sigmoid" and self.target == "predicted":
            raise ValueError("explain.target must be 'label' (or a class name) when explain.output is 'sigmoid'")
        return self


# Per-image result columns (images.parquet): a subgroup column of the same name would be overwritten.
RESULT_COLUMNS = frozenset(
    {"row", "predicted", "probability", "correct", "explained", "explained_probability", "zero_map", "flagged",
     "image_sha256", "mask_sha256", "image_format", "localised", "localisation_note", "area", "mass_in", "focus",
     "rank_accuracy", "pointing_hit", "energy_pointing", "top_k", "pixel_auroc", "bbox_iou", "outside_delta",
     "artifact_delta", "mass_artifact", "artifact_area"}
)  # fmt: skip
MANIFEST_COLUMNS = ("image_id", "image_path", "mask_path", "label", "counterfactual_path", "artifact_mask_path")


class MaskSource(_Strict):
    """Where each row's region (the part of the image that should matter) comes from.

    ``image`` (default): a mask image per row in ``mask_path``; the region is every pixel whose value in
    *any* channel is above ``data.mask_threshold`` (so a mask drawn in pure red counts). ``labelmap``: an
    integer label image per row in ``mask_path``; the region is the pixels whose value is one of
    ``values``. ``coco``: polygons or RLE from one COCO JSON file (``coco``), matched to rows by
    ``image_id`` = the COCO image's ``file_name`` (without folders or extension) or its ``id``; the
    region is the union of the annotations of ``categories`` (names; empty = all). ``box``: a bounding
    box in manifest columns ``box_columns`` (x0, y0, x1, y1 in the image's pixels; a box is a coarse
    region, so the box-based metrics say more than the pixel ones). ``dicom-seg``: a DICOM Segmentation
    file per row in ``mask_path`` (read with highdicom); the region is the union of ``segments``
    (segment numbers; empty = all). Any kind: a row with an empty ``mask_path`` (or no annotation or
    box) is excluded with that reason. A region smaller than the image is resized to it with nearest
    neighbour if its aspect ratio matches; one covering more than ``max_area`` of the image is excluded,
    since focus cannot tell a map that looks at it from one that looks anywhere.
    """

    kind: Literal["image", "labelmap", "coco", "box", "dicom-seg"] = "image"
    values: tuple[int, ...] = ()
    coco: Path | None = None
    categories: tuple[str, ...] = ()
    box_columns: tuple[str, str, str, str] = ("x0", "y0", "x1", "y1")
    segments: tuple[int, ...] = ()
    max_area: float = Field(default=0.99, gt=0, le=1)

    @model_validator(mode="after")
    def _kind_needs(self) -> MaskSource:
        if self.kind == "labelmap" and not self.values:
            raise ValueError("data.mask.values (the label values that form the region) is required for a labelmap")
        if self.kind == "coco" and self.coco is None:
            raise ValueError("data.mask.coco (the COCO JSON file) is required when data.mask.kind is 'coco'")
        return self


class Data(_Strict):
    """The audit set: a manifest (CSV, Parquet or JSON Lines) and the subgroup columns to disaggregate by.

    ``root``: the folder every file the manifest names must lie in (default: the manifest's folder);
    paths are relative to it, and one that leads outside (``..``, an absolute path elsewhere, a symlink
    out) is excluded, never read. ``columns``: the manifest's own names for the standard columns, e.g.
    ``{image_path: file, label: dx}``. ``bins``: numeric subgroup columns cut into right-open intervals,
    e.g. ``age: [0, 40, 65, 75, 120]`` gives groups ``[0, 40)``, ``[40, 65)``, ``[65, 75)``, ``[75, 120)``
    (the FDA's 65-74 and 75+ bands). ``missing``: per subgroup column, ``keep`` (default: the row stays,
    in a group named ``missing`` that the report shows and the tests judge like any other; dropping
    those rows would bias a fairness audit against exactly the people with incomplete records) or
    ``exclude`` (each such row listed in the exclusions). ``dicom_frame``: the frame audited in
    multi-frame DICOM files (0-based); without it such files are excluded with that reason.
    ``absence_classes``: classes whose evidence is the *absence* of a finding ("normal", "no finding"),
    so their maps are not expected inside the region: their focus is reported but neither judged nor
    flagged (the counterfactual still is: a "normal" call that rests on a ruler is a shortcut too).
    Limits that bound what one row can cost, each refusal that row's exclusion: ``max_cell_chars``
    (any manifest cell), ``max_pixels`` (an image's or mask's width x height, read from its header
    before decoding) and ``max_decoded_mb`` (the decoded pixel data: width x height x channels x bytes
    per sample x frames, also from the header).
    """

    manifest: Path
    root: Path | None = None
    columns: dict[str, str] = {}
    classes: tuple[str, ...] = Field(min_length=2)
    subgroups: tuple[str, ...] = ()
    bins: dict[str, tuple[float, ...]] = {}
    missing: dict[str, Literal["keep", "exclude"]] = {}
    intersections: tuple[tuple[str, ...], ...] = ()
    positive_class: str | None = None
    absence_classes: tuple[str, ...] = ()
    mask: MaskSource = MaskSource()
    mask_threshold: int = Field(default=127, ge=0, le=254)
    dicom_frame: int | None = Field(default=None, ge=0)
    max_cell_chars: int = Field(default=4096, ge=64)
    max_pixels: int = Field(default=40_000_000, ge=4096)
    max_decoded_mb: float = Field(default=512.0, gt=0)

    @model_validator(mode="after")
    def _known_columns(self) -> Data:
        reserved = [c for c in self.subgroups if c in RESULT_COLUMNS or c.startswith(("p_", "counterfactual_"))]
        if reserved:
            raise ValueError(
                f"data.subgroups: {reserved} are names the audit's results use; rename the column in the manifest"
            )
        duplicated = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if duplicated:
            raise ValueError(f"data.classes: {duplicated} listed more than once; each model output needs its own name")
        unknown = [c for c in self.columns if c not in MANIFEST_COLUMNS]
        if unknown:
            raise ValueError(f"data.columns: {unknown} are not standard columns ({', '.join(MANIFEST_COLUMNS)})")
        for name, what in ((self.bins, "bins"), (self.missing, "missing")):
            stray = [c for c in name if c not in self.subgroups]
            if stray:
                raise ValueError(f"data.{what}: {stray} are not among data.subgroups")
        for col, edges in self.bins.items():
            if len(edges) < 2 or any(b <= a for a, b in pairwise(edges)):
                raise ValueError(f"data.bins.{col}: needs two or more strictly increasing edges, got {list(edges)}")
        for combo in self.intersections:
            unknown = [c for c in combo if c not in self.subgroups]
            if len(combo) < 2 or unknown:
                raise ValueError(f"data.intersections: {list(combo)} must name two or more of data.subgroups")
        if self.positive_class is not None and self.positive_class not in self.classes:
            raise ValueError(f"data.positive_class {self.positive_class!r} is not one of data.classes")
        unknown = [c for c in self.absence_classes if c not in self.classes]
        if unknown:
            raise ValueError(f"data.absence_classes: {unknown} are not among data.classes")
        return self

    @property
    def positive(self) -> str | None:
        """The class sensitivity and AUROC are computed for: as configured, else the last of two."""
        return self.positive_class or (self.classes[-1] if len(self.classes) == 2 else None)

    @property
    def data_root(self) -> Path:
        return self.root if self.root is not None else self.manifest.parent


class Level(_Strict):
    """A share above ``warn`` makes the verdict at least *warn*; above ``fail``, *fail* (None: never)."""

    warn: float | None = Field(default=None, ge=0, le=1)
    fail: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Level:
        if self.warn is not None and self.fail is not None and self.warn > self.fail:
            raise ValueError("warn must not be above fail")
        return self


class Thresholds(_Strict):
    """Flags and the verdict's rules.

    ``focus``: an image is flagged *spurious focus* when ``mass_in / area`` is below this value;
    1.0 means "no more attention on the region than a uniform map would give it".
    ``alpha``: family-wise error rate of the subgroup tests (one-sided stratified permutation tests of
    focus per explained class and of reliance, group vs reference, all adjusted together as
    ``stats.correction`` says). 0.025 because the tests are one-sided: the same error rate as a two-sided
    test at 0.05 (ICH E9's convention for one-sided hypotheses in confirmatory analyses).
    ``min_group_size``: smaller groups are reported as "too small to judge", never pass or fail.
    ``min_map_size``: the explained layer's map side below which focus cannot be judged well (warn).
    ``subgroup_outside_dependence``: what a subgroup whose predictions depend on evidence outside the
    region significantly more often than its reference's (the counterfactual, within explained class and
    the other attributes' cells) makes the verdict: this is a confirmed shortcut. The excess must be
    material too: ``min_reliance_gap`` (default 0.1: ten more predictions in a hundred rest on evidence
    outside the region than among comparable reference images), so a large audit set does not fail a
    group for a statistically clear but negligible difference.
    ``attention_without_reliance``: what a subgroup with significantly less focus (in some explained
    class) makes the verdict when the counterfactual is available and does *not* confirm reliance.
    ``subgroup_disparity``: the same, when no counterfactual was measured (focus is all there is).
    The shares are over all audited images: ``flagged_share`` (spurious focus),
    ``right_for_wrong_reason`` (flagged *and* correct), ``outside_dependence`` (counterfactual: the
    prediction drops by more than ``counterfactual.dependence`` when the outside of the mask is
    neutralised), ``zero_maps`` (maps with no positive evidence, which cannot be judged).
    ``sanity``: what maps that survive parameter randomisation make the verdict.
    ``discovered_shortcut``: what a candidate found without annotations (:mod:`audit.discovery`) that is
    concentrated in a subgroup or class *and* changes predictions when removed makes the verdict (warn:
    a finding for a person to look at; the group's own reliance test decides a fail).
    """

    focus: float = Field(default=1.0, gt=0)
    alpha: float = Field(default=0.025, gt=0, lt=1)
    min_group_size: int = Field(default=10, ge=2)
    min_map_size: int = Field(default=7, ge=1)
    subgroup_outside_dependence: Literal["fail", "warn", "off"] = "fail"
    min_reliance_gap: float = Field(default=0.1, ge=0, le=1)
    attention_without_reliance: Literal["fail", "warn", "off"] = "warn"
    subgroup_disparity: Literal["fail", "warn"] = "fail"
    flagged_share: Level = Level(warn=0.5)
    right_for_wrong_reason: Level = Level(warn=0.25)
    outside_dependence: Level = Level(warn=0.25)
    zero_maps: Level = Level(warn=0.1)
    sanity: Literal["fail", "warn", "off"] = "warn"
    discovered_shortcut: Literal["fail", "warn", "off"] = "warn"


class Metrics(_Strict):
    """Settings of the per-image localisation metrics (see ``audit/metrics.py``).

    ``top_k``: top-k intersection's k as a share of the image's pixels. ``bbox_threshold``: the share
    of the map's maximum above which pixels form the "hot" region whose largest component's box is
    compared with the mask's box (0.15 as in the Grad-CAM paper).
    """

    top_k: float = Field(default=0.05, gt=0, le=1)
    bbox_threshold: float = Field(default=0.15, gt=0, lt=1)


class Sanity(_Strict):
    """Explanation sanity check (Adebayo et al. 2018, cascading model parameter randomisation).

    On ``sample`` images (seeded), the weights are re-initialised from the output back and the maps
    recomputed, ``draws`` times with independent random weights (similarities are averaged over them:
    one draw's sign decides too much). If within the first ``steps`` steps the maps' mean Spearman correlation with the
    originals is still above ``max_similarity``, the maps describe the image, not the model's decision.
    Runs for torchvision and factory models (TorchScript and ONNX weights cannot be re-initialised).
    """

    enabled: bool = True
    sample: int = Field(default=32, ge=2)
    draws: int = Field(default=4, ge=1)
    steps: int = Field(default=2, ge=1)
    max_similarity: float = Field(default=0.5, gt=0, lt=1)
    seed: int = 0


class Occlusion(_Strict):
    """Map-guided local occlusion with a matched control (``counterfactual.evidence: occlusion``).

    On the explained layer's grid (at most ``max_grid`` cells a side), the cells outside the region
    (dilated by ``margin`` of the image side) that hold ``mass_share`` of the map's outside mass, largest
    first and at most ``max_area`` of the outside area, are filled from their surroundings (the region's
    own pixels never feed the fill). ``controls`` times, as many pixels of randomly chosen *other*
    outside cells are filled the same way (seeded per manifest row by ``seed``). The evidence is the
    excess drop: the explained class's probability drop under the guided fill minus the mean drop under
    the controls. Filling a few patches keeps the image close to what the model was trained on, and the
    control cancels what filling patches anywhere does by itself. A control whose fill *raises* the
    explained class's probability counts as no drop: it removed counter-evidence (the other class's
    shortcut), which is no off-target effect of filling and must not inflate the excess.
    """

    mass_share: float = Field(default=0.8, gt=0, le=1)
    grow: int = Field(default=1, ge=0, le=8)
    max_area: float = Field(default=0.5, gt=0, le=1)
    margin: float = Field(default=0.02, ge=0, le=0.5)
    controls: int = Field(default=2, ge=1, le=16)
    max_grid: int = Field(default=32, ge=2)
    seed: int = 0


class Counterfactual(_Strict):
    """Counterfactual confirmation: a map is correlational, a changed prediction is evidence.

    For every image the region outside the *dilated* mask is replaced by ``fill`` (``blur``: the image
    itself, heavily blurred; ``mean``: its mean colour), and, where the manifest has an
    ``artifact_mask_path`` column, just that region is neutralised the same way. The change in the
    explained class's probability is recorded; an image *depends on outside evidence* when it drops by
    more than ``dependence``.

    ``evidence``: what reliance rests on where the audit set has region masks only (no artifact mask,
    no supplied rendering). ``occlusion`` (default): map-guided local occlusion against a matched
    control (see :class:`Occlusion`); ``blur``: the whole outside replaced as above. The whole-outside
    replacement is always recorded (``outside_delta``), but a heavy blur over most of an image reads as
    a defocused scanner to a model that learned one, so it is evidence only when chosen here.
    """

    enabled: bool = True
    fill: Literal["blur", "mean"] = "blur"
    dilate: float = Field(default=0.05, ge=0, le=0.5)
    blur_factor: int = Field(default=16, ge=2)
    dependence: float = Field(default=0.2, gt=0, lt=1)
    evidence: Literal["occlusion", "blur"] = "occlusion"
    occlusion: Occlusion = Field(default_factory=lambda: Occlusion())


class Discovery(_Strict):
    """Shortcut discovery without artifact annotations (:mod:`audit.discovery`): the images whose map
    puts at least ``min_outside_share`` of its mass outside the region are grouped by what their
    attended outside cells show (at most ``max_clusters`` groups; beyond ``max_pool`` images a
    seeded sample is clustered), and each group is tested for concentration in a subgroup and for an
    effect on predictions. ``exemplars``: member images shown per candidate."""

    enabled: bool = True
    min_outside_share: float = Field(default=0.25, ge=0, lt=1)
    max_clusters: int = Field(default=6, ge=2, le=20)
    max_pool: int = Field(default=3000, ge=50)
    exemplars: int = Field(default=6, ge=1, le=24)
    seed: int = 0


class Stats(_Strict):
    """``correction``: ``holm`` (family-wise error) or ``bh`` (Benjamini-Hochberg false-discovery
    rate) over all group comparisons. ``reference``: what each group is compared with: ``rest`` (the
    rest of the audit set), ``largest`` (the largest group of the same column), or a mapping
    ``{column: group}`` naming the reference group per column."""

    correction: Literal["holm", "bh"] = "holm"
    reference: Literal["rest", "largest"] | dict[str, str] = "rest"
    n_boot: int = Field(default=2000, ge=100)
    seed: int = 0
    ci_level: float = Field(default=0.95, gt=0.5, lt=1)


class Context(_Strict):
    """What the audit is about, for the compliance packet (EU AI Act Annex IV, FDA GMLP): every key is
    optional free text, printed as given (escaped) in the report's cover and context section."""

    model_name: str | None = None
    model_version: str | None = None
    intended_use: str | None = None
    population: str | None = None
    sites: str | None = None
    annotation_protocol: str | None = None
    independence: str | None = None  # how the audit set is independent of the training data
    author: str | None = None
    organisation: str | None = None


class Report(_Strict):
    """``max_cases``: flagged cases drawn in the gallery (worst focus first); ``panel_size``: the height
    in pixels of each of a case's three panels (image, map, region), sized for print."""

    max_cases: int = Field(default=200, ge=0)
    panel_size: int = Field(default=160, ge=32, le=1024)


class Orchestration(_Strict):
    """How the Prefect flow runs its shard tasks (the library itself never imports Prefect).

    ``threads`` (default; ``workers: 1`` is one shard after another in this process), ``processes``
    (Prefect's process pool: one model per process, shards in parallel), ``dask`` (prefect-dask's
    ``DaskTaskRunner``: the scheduler at ``address``, or a local cluster of ``workers`` processes when
    no address is given). Results do not depend on the runner.

    ``cache_dir``: where finished shards are kept by content (:mod:`audit.shardcache`), so a killed run
    started again recomputes only unfinished shards; default ``<output_dir>/.shard-cache``.

    ``api_startup_seconds``: how long ``audit run`` waits for the temporary Prefect API it starts when
    no ``PREFECT_API_URL`` is set (Prefect's own default, 20 s, is too short on a loaded machine).
    """

    runner: Literal["threads", "processes", "dask"] = "threads"
    workers: int = Field(default=1, ge=1)
    address: str | None = None
    cache_dir: Path | None = None
    api_startup_seconds: int = Field(default=180, ge=5, le=3600)


class AuditConfig(_Strict):
    run_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    output_dir: Path = Path("reports")
    model: ModelSource
    preprocessing: Preprocessing = Preprocessing()
    explain: Explain = Explain()
    data: Data
    thresholds: Thresholds = Thresholds()
    metrics: Metrics = Metrics()
    sanity: Sanity = Sanity()
    counterfactual: Counterfactual = Counterfactual()
    discovery: Discovery = Discovery()
    stats: Stats = Stats()
    context: Context = Context()
    report: Report = Report()
    orchestration: Orchestration = Orchestration()

    @field_validator("run_name")
    @classmethod
    def _no_dots_only(cls, v: str) -> str:
        if set(v) <= {"."}:
            raise ValueError("run_name must name a folder")
        return v

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.run_name

    def explained_target(self) -> str:
        t = self.explain.target
        if t not in ("predicted", "label") and t not in self.data.classes:
            raise ConfigError(f"explain.target: {t!r} is neither 'predicted', 'label' nor one of {self.data.classes}")
        return t


def _resolve(base: Path, cfg: AuditConfig) -> AuditConfig:
    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    model_update: dict[str, object] = {}
    if cfg.model.checkpoint is not None:
        model_update["checkpoint"] = absolute(cfg.model.checkpoint)
    if cfg.model.factory and ".py:" in cfg.model.factory:
        file, func = cfg.model.factory.rsplit(":", 1)
        model_update["factory"] = f"{absolute(Path(file))}:{func}"
    return cfg.model_copy(
        update={
            "output_dir": absolute(cfg.output_dir),
            "orchestration": cfg.orchestration.model_copy(
                update={"cache_dir": absolute(cfg.orchestration.cache_dir) if cfg.orchestration.cache_dir else None}
            ),
            "model": cfg.model.model_copy(update=model_update),
            "data": cfg.data.model_copy(
                update={
                    "manifest": absolute(cfg.data.manifest),
                    "root": absolute(cfg.data.root) if cfg.data.root is not None else None,
                    "mask": cfg.data.mask.model_copy(
                        update={"coco": absolute(cfg.data.mask.coco) if cfg.data.mask.coco else None}
                    ),
                }
            ),
        }
    )


def _format(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid audit config"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: object, base_dir: Path, source: str = "<config>") -> AuditConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys to values")
    try:
        cfg = AuditConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None
    cfg = _resolve(base_dir, cfg)
    try:
        cfg.explained_target()
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cfg


MAX_CONFIG_BYTES = 1_000_000  # an audit config is a few kilobytes
MAX_CONFIG_NODES = 100_000  # keys, values and list items, counted through aliases
MAX_CONFIG_DEPTH = 64


def _check_shape(data: object, source: str) -> None:
    """Refuse documents whose size or nesting would make validation itself the problem: YAML aliases
    can make a 1 KB file stand for a billion values, and deep nesting overflows Python's stack."""
    stack, nodes = [(data, 1)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_CONFIG_NODES:
            raise ConfigError(f"{source}: the config holds more than {MAX_CONFIG_NODES} values (YAML aliases count "
                              "each time they are used); an audit config is a short mapping")  # fmt: skip
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{source}: the config is nested more than {MAX_CONFIG_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for kv in node.items() for v in kv)
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)


def load_config(path: str | Path) -> AuditConfig:
    """Read and validate a YAML audit config; paths inside are relative to the file's folder. Every
    problem with the file (missing, too large, not UTF-8, not YAML, nested too deep, invalid values) is
    one :class:`ConfigError`."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes; an audit config is a few kilobytes (limit {MAX_CONFIG_BYTES})")
        text = path.read_bytes().decode("utf-8-sig")
        data = yaml.safe_load(text)
    except ConfigError:
        raise
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err)[:500]}") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"{path}: the YAML document is nested too deeply or too large to read") from None
    _check_shape(data, str(path))
    try:
        return parse_config(data, path.resolve().parent, str(path))
    except (RecursionError, TypeError, OverflowError) as err:
        raise ConfigError(f"{path}: invalid config: {type(err).__name__}: {str(err)[:300]}") from None
