"""How good is a ShapeWorld teacher? A small shape-and-colour classifier trained on ShapeWorld renders
judges the teacher's own samples (its sampler, ``DiffusionTeacher.sample``, guided at --guidance-scale)
for all 36 prompts.
The bar of shapeworld.md is 90% for shape and for colour.

    python -m threed.shapeworld.teacher_quality train-classifier assets/shapeworld-classifier.pt
    python -m threed.shapeworld.teacher_quality evaluate assets/shapeworld-teacher [--per-prompt 4] [--grid samples.png]
    python -m threed.shapeworld.teacher_quality conditioning assets/shapeworld-teacher   # does it read each word?
    python -m threed.shapeworld.teacher_quality colour assets/shapeworld-teacher --prompt "a red vase"  # colour and size by guidance
    python -m threed.shapeworld.teacher_quality drift assets/shapeworld-teacher --prompt "a red vase"   # ... by guidance and t
    python -m threed.shapeworld.teacher_quality pull assets/shapeworld-teacher --from sphere   # from a ball to the shape?
    python -m threed.shapeworld.teacher_quality size assets/shapeworld-teacher   # the size it draws, as a ball's radius

The classifier is trained on renders of its own seeds (never the teacher's training set) with a little
Gaussian pixel noise, so that a recognisable but grainy sample is judged by its shape, not its grain.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Callable

import imageio.v3 as imageio
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn
from tqdm import tqdm

from guidance.distillation import GuidanceSpec, ScoreDistillation, ViewBatch
from guidance.prompts import VIEWS
from guidance.schedules import Ramp
from guidance.teacher import DiffusionTeacher, TeacherSpec
from threed.config import PROJECT_ROOT
from threed.device import default_device
from threed.files import save_torch
from threed.mesh_metrics import chromaticity_error
from threed.shapeworld.canon import ALBEDOS, COLOURS, SHAPES, SHAPEWORLD_VIEWS, caption, parse_prompt
from threed.shapeworld.render import generate_dataset, render_shape, render_shape_with_mask, sample_dataset_cameras

log = logging.getLogger(__name__)
QUALITY_BAR = 0.9
DEFAULT_CLASSIFIER = PROJECT_ROOT / "assets" / "shapeworld-classifier.pt"


class ShapeColourClassifier(nn.Module):
    """Four stride-2 conv blocks and two linear heads: images [N, 3, 64, 64] in [0, 1] ->
    (shape logits [N, 6] over SHAPES, colour logits [N, 6] over COLOURS)."""

    def __init__(self, width: int = 32):
        super().__init__()
        channels = (3, width, 2 * width, 4 * width, 4 * width)
        self.features = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())
            for c_in, c_out in zip(channels[:-1], channels[1:])
        ))  # 64 -> 4 pixels
        self.shape_head = nn.Linear(channels[-1] * 16, len(SHAPES))
        self.colour_head = nn.Linear(channels[-1], len(COLOURS))
        self.width = width

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(images * 2.0 - 1.0)  # [N, C, 4, 4]
        return self.shape_head(features.flatten(1)), self.colour_head(features.mean(dim=(2, 3)))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """images [N, 3, 64, 64] in [0, 1] -> shape and colour indices, [N] each."""
        shapes, colours = [], []
        for chunk in images.split(batch):
            shape_logits, colour_logits = self(chunk)
            shapes.append(shape_logits.argmax(-1))
            colours.append(colour_logits.argmax(-1))
        return torch.cat(shapes), torch.cat(colours)


def dataset_tensors(per_prompt: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh ShapeWorld renders -> images [N, 3, 64, 64] in [0, 1], shape and colour indices [N]."""
    data = generate_dataset(per_prompt, seed, show_progress=True)
    images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float() / 255.0
    return images, torch.from_numpy(data["shape_index"]), torch.from_numpy(data["colour_index"])


def train_classifier(per_prompt: int = 160, epochs: int = 4, seed: int = 1, noise_std: float = 0.08,
                     batch: int = 64, lr: float = 2e-3) -> ShapeColourClassifier:
    """Trains on renders of ``seed`` with Gaussian pixel noise of a random std in [0, noise_std]."""
    torch.manual_seed(seed)
    images, shapes, colours = dataset_tensors(per_prompt, seed)
    classifier = ShapeColourClassifier()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr)
    steps = epochs * (len(images) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    with tqdm(total=steps, desc="classifier") as progress:
        for _ in range(epochs):
            for pick in torch.randperm(len(images))[: steps // epochs * batch].split(batch):
                batch_images = images[pick]
                noise_scale = torch.rand(len(pick), 1, 1, 1) * noise_std
                shape_logits, colour_logits = classifier(batch_images + noise_scale * torch.randn_like(batch_images))
                loss = F.cross_entropy(shape_logits, shapes[pick]) + F.cross_entropy(colour_logits, colours[pick])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}")
    return classifier.eval()


def save_classifier(classifier: ShapeColourClassifier, path: Path) -> None:
    save_torch({"width": classifier.width, "state_dict": classifier.state_dict()}, path)


def load_classifier(path: Path = DEFAULT_CLASSIFIER) -> ShapeColourClassifier:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no ShapeWorld classifier at {path}; train one with "
                                f"`python -m threed.shapeworld.teacher_quality train-classifier {path}`")
    state = torch.load(path, weights_only=True)
    classifier = ShapeColourClassifier(state["width"])
    classifier.load_state_dict(state["state_dict"])
    return classifier.eval()


def load_teacher(name: str) -> DiffusionTeacher:
    """A teacher pipeline folder (or hub id) as the project's teacher, on the default device."""
    return DiffusionTeacher.from_pretrained(TeacherSpec(pretrained=name), default_device())


def accuracy_report(classifier: ShapeColourClassifier, images: torch.Tensor, shapes: torch.Tensor,
                    colours: torch.Tensor) -> dict:
    """Shape and colour accuracy overall and per true shape / colour, and the shape confusion matrix
    (rows: true shape, columns: predicted), for images [N, 3, 64, 64] in [0, 1]."""
    predicted_shapes, predicted_colours = classifier.predict(images)
    confusion = torch.zeros(len(SHAPES), len(SHAPES), dtype=torch.long)
    confusion.index_put_((shapes, predicted_shapes), torch.ones_like(shapes), accumulate=True)
    return {
        "n_images": len(images),
        "shape_accuracy": (predicted_shapes == shapes).float().mean().item(),
        "colour_accuracy": (predicted_colours == colours).float().mean().item(),
        "shape_accuracy_by_shape": {s: (predicted_shapes[shapes == i] == i).float().mean().item()
                                    for i, s in enumerate(SHAPES)},
        "colour_accuracy_by_colour": {c: (predicted_colours[colours == i] == i).float().mean().item()
                                      for i, c in enumerate(COLOURS)},
        "shape_confusion": {"rows_true_columns_predicted": list(SHAPES), "counts": confusion.tolist()},
    }


@torch.no_grad()
def sample_teacher(teacher: DiffusionTeacher, per_prompt: int, steps: int, guidance_scale: float,
                   seed: int, batch: int = 72) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``per_prompt`` samples of each of the 36 prompts, the view suffix cycling front, side, back,
    overhead -> images [36 * per_prompt, 3, 64, 64] in [0, 1] (shape-major), shape and colour indices."""
    labels = [(s, c, VIEWS[k % len(VIEWS)]) for s in range(len(SHAPES)) for c in range(len(COLOURS))
              for k in range(per_prompt)]
    captions = [caption(SHAPES[s], COLOURS[c], view) for s, c, view in labels]
    generator = torch.Generator(teacher.device).manual_seed(seed)
    images = []
    for start in tqdm(range(0, len(captions), batch), desc="sampling the teacher"):
        images.append(teacher.sample_images(captions[start:start + batch], "", steps, guidance_scale, generator).cpu())
    shapes, colours = (torch.tensor([label[i] for label in labels]) for i in (0, 1))
    return torch.cat(images), shapes, colours


def write_grid(images: torch.Tensor, columns: int, path: Path) -> None:
    """images [N, 3, H, W] in [0, 1], N a multiple of ``columns`` -> one PNG, row-major."""
    rows = images.reshape(-1, columns, *images.shape[1:])  # [R, C, 3, H, W]
    grid = rows.permute(0, 3, 1, 4, 2).reshape(rows.shape[0] * images.shape[2], columns * images.shape[3], 3)
    imageio.imwrite(path, (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy())


def evaluate_teacher(teacher: str, classifier_path: Path, per_prompt: int, steps: int, guidance_scale: float,
                     seed: int, grid: Path | None) -> dict:
    classifier = load_classifier(classifier_path)  # before the sampling, so a missing one fails at once
    images, shapes, colours = sample_teacher(load_teacher(teacher), per_prompt, steps, guidance_scale, seed)
    if grid is not None:
        write_grid(images, len(COLOURS) * per_prompt, grid)  # one row per shape
    report = accuracy_report(classifier, images, shapes, colours)
    passes = report["shape_accuracy"] >= QUALITY_BAR and report["colour_accuracy"] >= QUALITY_BAR
    sampler = {"scheduler": "DDIMScheduler", "steps": steps, "guidance_scale": guidance_scale,
               "per_prompt": per_prompt, "seed": seed}
    return {"teacher": str(teacher), "sampler": sampler, **report, "bar": QUALITY_BAR, "passes": passes}


def swap_word(caption_text: str, words: tuple[str, ...]) -> str:
    """"a red cube, front view" -> the same caption with its word of ``words`` replaced by another of them."""
    prompt, comma, view = caption_text.partition(",")
    parts = prompt.split()
    for index, part in enumerate(parts):
        if part in words:
            parts[index] = words[(words.index(part) + len(words) // 2) % len(words)]
            return " ".join(parts) + comma + view
    raise ValueError(f"{caption_text!r} has none of {words}")


@torch.no_grad()
def conditioning_report(teacher: DiffusionTeacher, per_prompt: int, seed: int,
                        timesteps: tuple[int, ...] = (100, 300, 500, 700, 900)) -> dict:
    """The teacher's denoising loss on fresh renders at a few timesteps, with the true caption, the
    shape word swapped, the colour word swapped and no caption: a teacher that reads a word loses
    more when that word is wrong."""
    images, shapes, colours = dataset_tensors(per_prompt, seed)
    images = images * 2.0 - 1.0
    views = [VIEWS[k % len(VIEWS)] for k in range(len(images))]
    true = [caption(SHAPES[s], COLOURS[c], v) for s, c, v in zip(shapes.tolist(), colours.tolist(), views)]
    captions = {"true": true, "wrong_shape": [swap_word(c, SHAPES) for c in true],
                "wrong_colour": [swap_word(c, COLOURS) for c in true], "empty": [""] * len(true)}
    encoded = {name: teacher.embed_text(texts) for name, texts in captions.items()}  # once, for every timestep
    scheduler = DDPMScheduler.from_config(teacher.scheduler.config)
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    generator = torch.Generator().manual_seed(seed)
    report = {}
    for t in timesteps:
        timestep = torch.full((len(images),), t)
        noise = torch.randn(images.shape, generator=generator)
        noisy = scheduler.add_noise(images, noise, timestep)
        target = scheduler.get_velocity(images, noise, timestep) if v_prediction else noise
        report[str(t)] = {name: F.mse_loss(teacher.unet(noisy.to(teacher.device, teacher.dtype), timestep.to(teacher.device),
                                                        encoder_hidden_states=states).sample.float().cpu(),
                                           target).item() for name, states in encoded.items()}
    return {"n_images": len(images), "loss_by_timestep": report}


def object_pixels(pixels: torch.Tensor, white_margin: float = 0.3) -> torch.Tensor:
    """pixels [..., 3] in [0, 1] on white -> [...] bool: the object's pixels, those with a channel below
    1 - ``white_margin``."""
    return pixels.min(dim=-1).values < 1.0 - white_margin


def object_fractions(images: torch.Tensor) -> torch.Tensor:
    """images [N, 3, H, W] in [0, 1] on white -> [N]: the fraction of each image's pixels that are the object's."""
    return object_pixels(images.permute(0, 2, 3, 1)).float().flatten(1).mean(1)


def foreground_chromaticity_error(images: torch.Tensor, albedo: tuple[float, float, float],
                                  white_margin: float = 0.3) -> float:
    """images [N, 3, H, W] in [0, 1] on white -> the distance between the chromaticity of the mean
    colour of their object pixels (``object_pixels``) and the albedo's: the evaluator's colour error,
    measured on images."""
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3)
    foreground = pixels[object_pixels(pixels, white_margin)]
    if len(foreground) == 0:
        raise ValueError("the images are all white: no object pixels to measure")
    return chromaticity_error(foreground.mean(dim=0).double().numpy(), albedo)


@torch.no_grad()
def colour_bias_report(teacher: DiffusionTeacher, prompt: str, guidance_scales: list[float], n_images: int,
                       steps: int, seed: int) -> dict:
    """The colour error of the teacher's samples of ``prompt`` at each guidance scale, next to that of
    the data generator's renders (what the teacher learned from): the colour error below which a
    distillation at that scale cannot be expected to go. Also the size the teacher draws: the mean
    fraction of object pixels (``object_pixels``) of its samples and of the renders, and the renders'
    10% and 90% quantiles of it: how much the object's size in the image varies with the data set's
    camera distance and field of view, which the teacher's captions do not name."""
    shape, colour = parse_prompt(prompt)
    cameras = sample_dataset_cameras(n_images, torch.Generator().manual_seed(seed))
    renders = render_shape(shape, colour, cameras).permute(0, 3, 1, 2)
    render_fractions = object_fractions(renders)
    captions = [caption(shape, colour, VIEWS[k % len(VIEWS)]) for k in range(n_images)]
    errors, teacher_fractions = {}, {}
    for scale in guidance_scales:
        images = teacher.sample_images(captions, "", steps, scale, torch.Generator(teacher.device).manual_seed(seed)).cpu()
        errors[str(scale)] = foreground_chromaticity_error(images, ALBEDOS[colour])
        teacher_fractions[str(scale)] = float(object_fractions(images).mean())
    return {"prompt": prompt, "n_images": n_images, "steps": steps, "seed": seed,
            "renders_colour_error": foreground_chromaticity_error(renders, ALBEDOS[colour]),
            "teacher_colour_error_by_guidance_scale": errors,
            "renders_object_fraction": float(render_fractions.mean()),
            "renders_object_fraction_10_90": torch.quantile(render_fractions, torch.tensor([0.1, 0.9])).tolist(),
            "teacher_object_fraction_by_guidance_scale": teacher_fractions}


@torch.no_grad()
def colour_drift_report(teacher: DiffusionTeacher, prompt: str, guidance_scales: list[float], timesteps: list[int],
                        n_images: int, seed: int) -> dict:
    """Which way the teacher's score pulls the colour of a render that is already right: the mean
    object colour (over the true silhouettes) of its one-step x0-prediction from noised renders of
    ``prompt``, by guidance scale and timestep, averaged over ``n_images`` views. A score distillation
    at that scale and t moves the 3D colour the same way."""
    if teacher.vae is not None:
        raise ValueError("drift measures pixel-space teachers (ShapeWorld); this one is a latent teacher")
    shape, colour = parse_prompt(prompt)
    generator = torch.Generator(teacher.device).manual_seed(seed)
    cameras = sample_dataset_cameras(n_images, generator)
    renders, silhouettes = render_shape_with_mask(shape, colour, cameras)  # [N, H, W, 3], [N, H, W]
    views = ViewBatch(renders, cameras.elevation_deg, cameras.azimuth_deg, cameras.c2w)
    inside = silhouettes[:, None].float()  # [N, 1, H, W]

    def colour_entry(x: torch.Tensor) -> dict:
        """x [N, 3, H, W] in [-1, 1] -> its mean object colour and that colour's chromaticity error."""
        mean = ((x.clamp(-1, 1) + 1) / 2 * inside).sum(dim=(0, 2, 3)) / inside.sum()
        mean = mean.double().cpu().numpy()
        return {"object_colour": [round(float(v), 4) for v in mean],
                "colour_error": round(chromaticity_error(mean, ALBEDOS[colour]), 4)}

    by_scale = {}
    for scale in guidance_scales:
        # The distillation's own guidance (SDS: the teacher alone), with the captions' view suffixes.
        guidance = ScoreDistillation(teacher, GuidanceSpec(estimator="sds"), caption(shape, colour), "", Ramp(scale),
                                     SHAPEWORLD_VIEWS)
        by_scale[str(scale)] = {}
        for timestep in timesteps:
            t = torch.full((n_images,), timestep, device=teacher.device)
            x0, x0_prediction, _ = guidance.x0_predictions(views, 0, generator, t)
            by_scale[str(scale)][str(timestep)] = colour_entry(x0_prediction)
    return {"prompt": prompt, "n_images": n_images, "seed": seed, "renders": colour_entry(x0),
            "x0_prediction_by_guidance_scale_and_timestep": by_scale}


@torch.no_grad()
def shape_pull_report(teacher: DiffusionTeacher, classifier: ShapeColourClassifier, start_shape: str,
                      guidance_scales: list[float], timesteps: list[int], n_images: int, seed: int) -> dict:
    """Does the teacher's score point from a wrong shape toward the prompt's? For every other canon shape S
    (its colour cycling through the palette), renders of ``start_shape`` in S's colour are noised at each
    timestep and the teacher's one-step x0-prediction for "a COLOUR S" at each guidance scale is classified:
    the fraction of views classified S (the pull a score distillation at that scale and t gets toward S)
    and the fraction still classified ``start_shape``, over all S and ``n_images`` views each. The sphere
    is the start a distillation has: its initial blob is a ball."""
    if teacher.vae is not None:
        raise ValueError("pull measures pixel-space teachers (ShapeWorld); this one is a latent teacher")
    generator = torch.Generator(teacher.device).manual_seed(seed)
    targets = [shape for shape in SHAPES if shape != start_shape]
    counts = {str(scale): {str(t): {"target": 0, "start": 0} for t in timesteps} for scale in guidance_scales}
    for index, target in enumerate(targets):
        colour = COLOURS[index % len(COLOURS)]
        cameras = sample_dataset_cameras(n_images, generator)
        renders = render_shape(start_shape, colour, cameras)  # [N, H, W, 3]
        views = ViewBatch(renders, cameras.elevation_deg, cameras.azimuth_deg, cameras.c2w)
        for scale in guidance_scales:
            guidance = ScoreDistillation(teacher, GuidanceSpec(estimator="sds"), caption(target, colour), "",
                                         Ramp(scale), SHAPEWORLD_VIEWS)
            for timestep in timesteps:
                t = torch.full((n_images,), timestep, device=teacher.device)
                _, x0_prediction, _ = guidance.x0_predictions(views, 0, generator, t)
                predicted, _ = classifier.predict(((x0_prediction.clamp(-1, 1) + 1) / 2).cpu())
                entry = counts[str(scale)][str(timestep)]
                entry["target"] += int((predicted == SHAPES.index(target)).sum())
                entry["start"] += int((predicted == SHAPES.index(start_shape)).sum())
    total = n_images * len(targets)
    return {"start_shape": start_shape, "targets": targets, "n_images_per_target": n_images, "seed": seed,
            "fraction_classified_target_by_guidance_scale_and_timestep":
                {scale: {t: round(c["target"] / total, 3) for t, c in row.items()} for scale, row in counts.items()},
            "fraction_classified_start_by_guidance_scale_and_timestep":
                {scale: {t: round(c["start"] / total, 3) for t, c in row.items()} for scale, row in counts.items()}}


def ball_object_fraction(radius: float, cameras) -> float:
    """The mean fraction of a square image's pixels that a ball of ``radius`` at the origin covers, over
    ``cameras`` (each looking at the origin): its silhouette is a disc of angular radius asin(radius / distance)."""
    half_angle = torch.asin(torch.as_tensor(radius / cameras.distance).clamp(max=1.0))
    return float((torch.pi * torch.tan(half_angle) ** 2 / (4 * torch.tan(cameras.fovy / 2) ** 2)).mean())


def matching_ball_radius(fraction: float, cameras, tolerance: float = 1e-4) -> float:
    """The radius of the ball whose mean ``ball_object_fraction`` over ``cameras`` is ``fraction`` (bisection)."""
    low, high = 0.0, float(cameras.distance.min()) * 0.99
    while high - low > tolerance:
        middle = (low + high) / 2
        low, high = (middle, high) if ball_object_fraction(middle, cameras) < fraction else (low, middle)
    return (low + high) / 2


@torch.no_grad()
def size_report(teacher: DiffusionTeacher, per_prompt: int, steps: int, seed: int) -> dict:
    """How big the teacher draws objects, whatever the prompt: the mean object fraction (``object_fractions``)
    of its samples of all 36 prompts (guidance 1), per shape and overall, and the radius of the ball that
    covers the same mean fraction under the data set's cameras: a prompt-neutral size for a distillation's
    initial blob, taken from the teacher rather than from the canon's shapes."""
    images, shapes, _ = sample_teacher(teacher, per_prompt, steps, 1.0, seed)
    fractions = object_fractions(images)
    cameras = sample_dataset_cameras(4096, torch.Generator().manual_seed(seed))
    return {"n_images": len(images), "steps": steps, "seed": seed,
            "object_fraction": round(float(fractions.mean()), 4),
            "object_fraction_by_shape": {s: round(float(fractions[shapes == i].mean()), 4) for i, s in enumerate(SHAPES)},
            "matching_ball_radius": round(matching_ball_radius(float(fractions.mean()), cameras), 4)}


def _train_classifier_command(arguments: argparse.Namespace) -> None:
    classifier = train_classifier(arguments.per_prompt, arguments.epochs, arguments.seed)
    held_out = dataset_tensors(arguments.held_out_per_prompt, arguments.seed + 1000)
    report = accuracy_report(classifier, *held_out)
    save_classifier(classifier, arguments.out)
    print(json.dumps({"classifier": str(arguments.out), "held_out_renders": report}))


def _evaluate_command(arguments: argparse.Namespace) -> None:
    report = evaluate_teacher(arguments.teacher, arguments.classifier, arguments.per_prompt, arguments.steps,
                              arguments.guidance_scale, arguments.seed, arguments.grid)
    print(json.dumps(report))


def _conditioning_command(arguments: argparse.Namespace) -> None:
    print(json.dumps(conditioning_report(load_teacher(arguments.teacher), arguments.per_prompt, arguments.seed)))


def _colour_command(arguments: argparse.Namespace) -> None:
    try:  # before loading the teacher, so a typo fails at once
        parse_prompt(arguments.prompt)
        scales = [float(scale) for scale in arguments.guidance_scales.split(",")]
    except ValueError as error:
        raise SystemExit(f"error: {error} (--prompt is 'a COLOUR SHAPE', --guidance-scales e.g. 1,2)") from None
    print(json.dumps(colour_bias_report(load_teacher(arguments.teacher), arguments.prompt, scales, arguments.n_images, arguments.steps,
                                        arguments.seed)))


def _scales_and_timesteps(arguments: argparse.Namespace, check_first: Callable[[], None]) -> tuple[list[float], list[int]]:
    """--guidance-scales and --timesteps, parsed after ``check_first`` (the command's own checks) and before
    the teacher loads, so that a typo fails at once."""
    try:
        check_first()
        return ([float(scale) for scale in arguments.guidance_scales.split(",")],
                [int(t) for t in arguments.timesteps.split(",")])
    except ValueError as error:
        raise SystemExit(f"error: {error} (--guidance-scales e.g. 1,2,7.5, --timesteps e.g. 100,500,900)") from None


def _teacher_for(arguments: argparse.Namespace, timesteps: list[int]) -> DiffusionTeacher:
    teacher = load_teacher(arguments.teacher)
    if not all(0 <= t < teacher.num_train_timesteps for t in timesteps):
        raise SystemExit(f"error: --timesteps must lie in [0, {teacher.num_train_timesteps}), got {timesteps}")
    return teacher


def _drift_command(arguments: argparse.Namespace) -> None:
    scales, timesteps = _scales_and_timesteps(arguments, lambda: parse_prompt(arguments.prompt))
    teacher = _teacher_for(arguments, timesteps)
    print(json.dumps(colour_drift_report(teacher, arguments.prompt, scales, timesteps, arguments.n_images, arguments.seed)))


def _check_start_shape(shape: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"--from must be one of {list(SHAPES)}, got {shape!r}")


def _pull_command(arguments: argparse.Namespace) -> None:
    scales, timesteps = _scales_and_timesteps(arguments, lambda: _check_start_shape(arguments.start_shape))
    teacher = _teacher_for(arguments, timesteps)
    print(json.dumps(shape_pull_report(teacher, load_classifier(arguments.classifier), arguments.start_shape, scales,
                                       timesteps, arguments.n_images, arguments.seed)))


def _size_command(arguments: argparse.Namespace) -> None:
    print(json.dumps(size_report(load_teacher(arguments.teacher), arguments.per_prompt, arguments.steps, arguments.seed)))


def add_x0_prediction_arguments(command: argparse.ArgumentParser, scales: str, timesteps: str, n_images: int,
                                n_images_help: str) -> None:
    """The teacher folder and the arguments of the commands that read its x0-predictions of noised renders."""
    command.add_argument("teacher", help="pipeline folder of a ShapeWorld teacher")
    command.add_argument("--guidance-scales", default=scales, help="comma-separated")
    command.add_argument("--timesteps", default=timesteps, help="comma-separated, of the teacher's schedule")
    command.add_argument("--n-images", type=int, default=n_images, help=n_images_help)
    command.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m threed.shapeworld.teacher_quality", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train-classifier", help="train the shape-and-colour classifier on fresh renders")
    train.add_argument("out", type=Path, help="the .pt file to write")
    train.add_argument("--per-prompt", type=int, default=160, help="training renders per prompt (36 prompts)")
    train.add_argument("--held-out-per-prompt", type=int, default=20, help="renders per prompt to report accuracy on")
    train.add_argument("--epochs", type=int, default=4)
    train.add_argument("--seed", type=int, default=1, help="render seed (the teacher's data set uses 0)")
    train.set_defaults(run=_train_classifier_command)
    evaluate = commands.add_parser("evaluate", help="classify the teacher's samples of all 36 prompts (JSON)")
    evaluate.add_argument("teacher", help="pipeline folder (or hub id) of a ShapeWorld teacher")
    evaluate.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    evaluate.add_argument("--per-prompt", type=int, default=4, help="samples per prompt, views cycling")
    evaluate.add_argument("--steps", type=int, default=30, help="sampler steps")
    evaluate.add_argument("--guidance-scale", type=float, default=1.0,
                          help="classifier-free guidance; 1 is the conditional model alone (the shipped teacher's best)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--grid", type=Path, help="also write the samples as a PNG grid, one row per shape")
    evaluate.set_defaults(run=_evaluate_command)
    conditioning = commands.add_parser("conditioning", help="the teacher's loss with true and swapped words (JSON)")
    conditioning.add_argument("teacher", help="pipeline folder of a ShapeWorld teacher")
    conditioning.add_argument("--per-prompt", type=int, default=2, help="fresh renders per prompt")
    conditioning.add_argument("--seed", type=int, default=2)
    conditioning.set_defaults(run=_conditioning_command)
    colour = commands.add_parser("colour", help="the colour error and object size of the teacher's samples "
                                                "by guidance scale (JSON)")
    colour.add_argument("teacher", help="pipeline folder of a ShapeWorld teacher")
    colour.add_argument("--prompt", required=True, help='a ShapeWorld prompt, e.g. "a red vase"')
    colour.add_argument("--guidance-scales", default="1,1.5,2,3", help="comma-separated")
    colour.add_argument("--n-images", type=int, default=16, help="samples per scale (and renders), views cycling")
    colour.add_argument("--steps", type=int, default=30, help="sampler steps")
    colour.add_argument("--seed", type=int, default=0)
    colour.set_defaults(run=_colour_command)
    drift = commands.add_parser("drift", help="the colour of the teacher's x0-prediction from noised true renders, "
                                              "by guidance scale and timestep (JSON)")
    drift.add_argument("--prompt", required=True, help='a ShapeWorld prompt, e.g. "a red vase"')
    add_x0_prediction_arguments(drift, "1,2", "100,200,350,500,700,900", 16, "renders (random data-set views)")
    drift.set_defaults(run=_drift_command)
    pull = commands.add_parser("pull", help="how often the teacher's x0-prediction from noised renders of one shape, "
                                            "prompted with another, is classified as the prompt's (JSON)")
    pull.add_argument("--from", dest="start_shape", default="sphere", help="the shape rendered (default: the ball)")
    pull.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    add_x0_prediction_arguments(pull, "1,2,5,7.5", "200,400,600,800,950", 8, "renders (random data-set views) per target shape")
    pull.set_defaults(run=_pull_command)
    size = commands.add_parser("size", help="how big the teacher draws objects over all prompts, and the ball of that "
                                            "size (JSON)")
    size.add_argument("teacher", help="pipeline folder of a ShapeWorld teacher")
    size.add_argument("--per-prompt", type=int, default=2, help="samples per prompt (36 prompts), views cycling")
    size.add_argument("--steps", type=int, default=20, help="sampler steps")
    size.add_argument("--seed", type=int, default=0)
    size.set_defaults(run=_size_command)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        arguments.run(arguments)
    except (FileNotFoundError, OSError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
