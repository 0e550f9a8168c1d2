"""The run configuration: YAML files and ``key.path=value`` overrides merged onto typed dataclasses.

Validation is strict. An unknown key (with the closest valid key suggested), a value of the wrong
type, a value outside the range or choices declared in a field's metadata, a missing or over-long
prompt, or a run name or outputs folder that could reach outside its place is a ``ConfigError``
naming the key, raised before anything is written. A number given for a ramp
(``teacher.guidance_scale=50``) is that constant, whatever ramp it replaces.

Text is data: strings given through ``override`` (the prompt on the command line, everything the
demo takes) and strings saved in a run's config.yaml are never resolved as OmegaConf interpolations
(``${oc.env:HOME}`` stays those characters). A relative ``teacher.pretrained`` in a YAML file names
a folder beside that file or in the project, never one in the current folder.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from guidance.distillation import GuidanceSpec
from guidance.prompts import ViewPromptSpec
from guidance.schedules import Ramp
from guidance.teacher import TeacherSpec
from nerf.background import BackgroundSpec
from nerf.field import FieldSpec
from mesh.rasterize import nvdiffrast_available
from nerf import hashgrid_cpu
from nerf.hashgrid import tcnn_available
from nerf.renderer import RenderSpec
from threed.cameras import CameraSpec, TurntableSpec
from threed.errors import ConfigError
from threed.export import ExportSpec
from threed.files import write_text
from threed.mesh_representation import MeshStageSpec
from threed.regularizers import RegularizerSpec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAX_PROMPT_CHARS = 300
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a single folder name, never "." or ".."
LEARNING_RATE = (0.0, 1.0)


@dataclass
class OptimSpec:
    lr_encoding: float = field(default=0.01, metadata={"range": LEARNING_RATE})
    lr_networks: float = field(default=0.001, metadata={"range": LEARNING_RATE})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = field(default=1e-15, metadata={"range": (0.0, None)})
    # A factor on both learning rates, by step: {start: 1.0, end: 0.1, start_step: 150, end_step: 300}
    # decays them to a tenth over the run's second half.
    lr_scale: Ramp = field(default_factory=lambda: Ramp(1.0))


@dataclass
class TrainerSpec:
    max_steps: int = field(default=10000, metadata={"range": (1, None)})
    log_every: int = field(default=10, metadata={"range": (1, None)})
    val_every: int = field(default=200, metadata={"range": (1, None)})
    val_views: int = field(default=4, metadata={"range": (1, None)})
    val_resolution: int = field(default=128, metadata={"range": (8, 4096)})
    checkpoint_every: int = field(default=1000, metadata={"range": (1, None)})
    keep_checkpoints: int = field(default=2, metadata={"range": (1, None)})
    # What validation, the video and the meshes show: with ema_decay > 0, an exponential moving average
    # of the field's parameters, copied from the field up to ema_start_step and then averaged with this
    # decay per step (about 1 / (1 - decay) steps); it smooths the oscillation of a two-player
    # distillation (the render against its fake score) as SiD's and DMD's EMA of the generator does.
    # 0: the last step's field.
    ema_decay: float = field(default=0.0, metadata={"range": (0.0, 0.9999)})
    ema_start_step: int = field(default=0, metadata={"range": (0, None)})
    # Bit-exact reruns and resumes (torch.use_deterministic_algorithms); costs some speed, mostly on CUDA.
    deterministic: bool = True


@dataclass
class Config:
    prompt: str = MISSING
    name: str = ""  # the run folder's parent (a plain folder name); the config file's name when empty
    seed: int = field(default=0, metadata={"range": (0, 2**63 - 1)})
    outputs: str = "outputs"
    # What is trained: the hash-grid NeRF, or a mesh stage after a finished run (mesh.start_from): DMTet's
    # surface and its colour (dmtet), or the colour alone on a fixed surface (texture).
    representation: str = field(default="nerf", metadata={"choices": ("nerf", "dmtet", "texture")})
    geometry: FieldSpec = field(default_factory=FieldSpec)  # the NeRF's field (a mesh stage colours with its source's)
    mesh: MeshStageSpec = field(default_factory=MeshStageSpec)
    render: RenderSpec = field(default_factory=RenderSpec)
    background: BackgroundSpec = field(default_factory=BackgroundSpec)
    regularizers: RegularizerSpec = field(default_factory=RegularizerSpec)
    camera: CameraSpec = field(default_factory=CameraSpec)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    guidance: GuidanceSpec = field(default_factory=GuidanceSpec)
    views: ViewPromptSpec = field(default_factory=ViewPromptSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    video: TurntableSpec = field(default_factory=TurntableSpec)
    export: ExportSpec = field(default_factory=ExportSpec)


EXPORT_FORMATS = ("obj", "glb", "ply")


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Reads a YAML file (over the ``base:`` it names, if any), applies ``key.path=value`` overrides
    and validates the result."""
    path = Path(path)
    try:
        layers = [*read_yaml_chain(path), parse_overrides(overrides)]
        merged = OmegaConf.merge(OmegaConf.structured(Config), *(numbers_as_ramps(layer) for layer in layers))
        config: Config = OmegaConf.to_object(merged)
    except MissingMandatoryValue as error:
        raise ConfigError(f"{error.full_key} is not set: give it in the config or on the command line "
                          f"(for the prompt: --prompt \"a red vase\")") from None
    except OmegaConfBaseException as error:
        raise ConfigError(describe_omegaconf_error(error)) from None
    except ValueError as error:  # a dataclass's own consistency check
        raise ConfigError(f"invalid config: {error}") from None
    config.name = config.name or path.stem
    validate(config)
    return config


def read_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list:
    """The YAML file and, first, the chain of files it names as ``base:`` (relative to itself)."""
    if path.resolve() in seen:
        raise ConfigError(f"config {str(path)!r} includes itself through 'base:'")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pick one of configs/*.yaml")
    try:
        content = OmegaConf.load(path)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{line}: "
                          f"{getattr(error, 'problem', None) or error}") from None
    if not isinstance(content, DictConfig):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    resolve_teacher_folder(content, path.parent)
    base = content.pop("base", None)
    if base is None:
        return [content]
    return read_yaml_chain(path.parent / base, (*seen, path.resolve())) + [content]


def resolve_teacher_folder(content: DictConfig, config_folder: Path) -> None:
    """A relative ``teacher.pretrained`` of a YAML file made absolute where it names a folder beside the
    file or in the project (``assets/shapeworld-teacher``), whatever the current folder; otherwise (a
    hub id such as ``stabilityai/stable-diffusion-2-1-base``) left as it is."""
    teacher = content.get("teacher")
    name = teacher.get("pretrained") if isinstance(teacher, DictConfig) else None
    if not isinstance(name, str) or Path(name).expanduser().is_absolute():
        return
    for root in (config_folder, PROJECT_ROOT):
        if (root / name).is_dir():
            teacher["pretrained"] = str((root / name).resolve())
            return


def literal(text: str) -> str:
    """``text`` as OmegaConf reads it back without resolving it: every ``${`` escaped."""
    return text.replace("${", "\\${")


def override(key: str, value) -> str:
    """``key=value`` as omegaconf's dotlist reads it back unchanged (a prompt may hold commas, quotes or
    ``${...}``): strings become YAML single-quoted scalars, where only the quote itself is escaped, by
    doubling, and are never resolved as interpolations."""
    if isinstance(value, str):
        value = "'" + literal(value).replace("'", "''") + "'"
    return f"{key}={value}"


def parse_overrides(overrides: list[str]):
    for override in overrides:
        if "=" not in override or override.startswith("="):
            raise ConfigError(f"override {override!r} is not of the form key.path=value (e.g. trainer.max_steps=500)")
    return OmegaConf.from_dotlist(list(overrides))


def numbers_as_ramps(node: DictConfig, schema: type = Config, prefix: str = "") -> DictConfig:
    """``node`` (a YAML file's or the overrides' config) with each number given for a ``Ramp`` field of
    ``schema`` replaced, in place, by the constant ramp ``{start: number}``. A ramp given as anything
    but a number or a mapping is a ConfigError; other values are left for the merge to check."""
    types = typing.get_type_hints(schema)
    for spec_field in dataclasses.fields(schema):
        value = node.get(spec_field.name) if isinstance(node, DictConfig) else None
        kind = types[spec_field.name]
        if kind is Ramp and isinstance(value, (int, float)) and not isinstance(value, bool):
            node[spec_field.name] = dataclasses.asdict(Ramp(float(value)))  # the whole ramp: a constant
        elif kind is Ramp and value is not None and not isinstance(value, DictConfig):
            raise ConfigError(f"{prefix}{spec_field.name} = {value!r} is not a number or a ramp: give e.g. 2.0 or "
                              f"{{start: 2.0, end: 1.0, start_step: 100, end_step: 200}}")
        elif dataclasses.is_dataclass(kind) and isinstance(value, DictConfig):
            numbers_as_ramps(value, kind, f"{prefix}{spec_field.name}.")
    return node


def describe_omegaconf_error(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None) or "?"
    message = str(error).splitlines()[0]
    if "not in" in message and "Key" in message:
        suggestion = closest_key(key)
        hint = f"; did you mean {suggestion!r}?" if suggestion else "; see the dataclasses in threed/config.py for valid keys"
        return f"unknown config key {key!r}{hint}"
    return f"bad value for config key {key!r}: {message}"


def all_keys(schema: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, sections included."""
    keys = []
    for spec_field in dataclasses.fields(schema):
        keys.append(prefix + spec_field.name)
        section = spec_field.default_factory
        if isinstance(section, type) and dataclasses.is_dataclass(section):
            keys += all_keys(section, f"{prefix}{spec_field.name}.")
    return keys


def closest_key(key: str) -> str | None:
    matches = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
    return matches[0] if matches else None


def validate(config: Config) -> None:
    """Checks the ranges and choices declared in field metadata, and the values no dataclass owns."""
    check_metadata(config, prefix="")
    if not config.prompt.strip():
        raise ConfigError("the prompt is empty: pass --prompt \"a red vase\" or set prompt in the config")
    if len(config.prompt) > MAX_PROMPT_CHARS:
        raise ConfigError(f"the prompt has {len(config.prompt)} characters; keep it under {MAX_PROMPT_CHARS}")
    if not RUN_NAME.fullmatch(config.name):
        raise ConfigError(f"name = {config.name!r} is not a plain folder name: use up to 64 letters, digits, "
                          f"'.', '_' and '-', starting with a letter or digit (no '/' and no '..')")
    if config.geometry.grid.backend == "tcnn" and not tcnn_available():
        raise ConfigError("geometry.grid.backend=tcnn needs tiny-cuda-nn and a CUDA device, and this machine lacks "
                          "one: use geometry.grid.backend=auto (tiny-cuda-nn where it can run) or torch")
    if config.guidance.ratio.normalize and config.camera.batch_size == 1:
        raise ConfigError("guidance.ratio.normalize divides h by its mean over the step's views, and with camera.batch_size=1 "
                          "that makes h = 1 for every divergence (VSD): set camera.batch_size to 2 or more, or "
                          "guidance.ratio.normalize=false")
    if config.guidance.ratio.normalize and config.guidance.ratio.running_mean:
        raise ConfigError("guidance.ratio.normalize (by the step's mean of h) and guidance.ratio.running_mean (by its "
                          "running mean per band of t) are two ways to scale h: set one of them to false")
    if config.geometry.grid.backend == "cpu" and not hashgrid_cpu.available():
        raise ConfigError("geometry.grid.backend=cpu needs the fused C kernel, which no C compiler could build here "
                          "(see the warning above; set CC to a compiler): use geometry.grid.backend=auto or torch")
    if not config.outputs.strip() or ".." in Path(config.outputs).parts:
        raise ConfigError(f"outputs = {config.outputs!r} is not a usable folder: give a folder without '..', "
                          f"e.g. --outputs outputs")
    if config.representation != "nerf" and not config.mesh.start_from.strip():
        raise ConfigError(f"representation={config.representation} starts from a finished run: set mesh.start_from=RUN_DIR "
                          "(a folder under outputs/ with a checkpoint), or pass --from RUN_DIR")
    if config.mesh.rasterizer == "nvdiffrast" and not nvdiffrast_available():
        raise ConfigError("mesh.rasterizer=nvdiffrast needs nvdiffrast and a CUDA device, and this machine lacks one: "
                          "use mesh.rasterizer=auto (nvdiffrast where it can run) or torch")
    if config.representation != "nerf" and config.background.kind != "solid":
        raise ConfigError(f"representation={config.representation} renders over a solid background, not "
                          f"background.kind={config.background.kind}: set background.kind=solid (its colour: background.color)")
    unknown = sorted(set(config.export.formats) - set(EXPORT_FORMATS))
    if unknown:
        raise ConfigError(f"export.formats has unknown formats {unknown}; use any of {list(EXPORT_FORMATS)}")


def check_metadata(spec: Any, prefix: str) -> None:
    for spec_field in dataclasses.fields(spec):
        key, value = prefix + spec_field.name, getattr(spec, spec_field.name)
        low, high = spec_field.metadata.get("range", (None, None))
        if isinstance(value, Ramp):  # the range holds for every value along the ramp
            for end, end_value in (("start", value.start), ("end", value.end)):
                check_range(f"{key}.{end}", end_value, low, high)
            continue
        if dataclasses.is_dataclass(value):
            check_metadata(value, key + ".")
            continue
        check_range(key, value, low, high)
        choices = spec_field.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key} = {value!r} is not one of {list(choices)}")


def check_range(key: str, value, low, high) -> None:
    if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
        bounds = " and ".join(s for s in (f">= {low}" if low is not None else "", f"<= {high}" if high is not None else "") if s)
        raise ConfigError(f"{key} = {value} is out of range: it must be {bounds}")


def save_config(config: Config, path: Path) -> None:
    """The config as YAML (atomically), its strings escaped so that reading it back never resolves them."""
    def escaped(node):
        if isinstance(node, dict):
            return {key: escaped(value) for key, value in node.items()}
        if isinstance(node, list):
            return [escaped(value) for value in node]
        return literal(node) if isinstance(node, str) else node

    write_text(path, OmegaConf.to_yaml(OmegaConf.create(escaped(dataclasses.asdict(config)))))


def flat_config(config: Config) -> dict:
    """{"trainer.max_steps": 300, ...}: every leaf of the config by its dotted key."""
    def leaves(node, prefix: str):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], node

    return dict(leaves(dataclasses.asdict(config), ""))
