"""The concrete shape a model with dynamic dimensions is checked, profiled and measured at.

A graph input such as YOLOv8's ``images [batch, 3, height, width]`` says nothing about the sizes it takes,
and size 1 (what the registration check fed until now) breaks it: NudeNet's ``320n.onnx`` fails in a
``Concat`` at 1x1 ("Non concat axis dimensions must match: 1 and 2") and runs at 224, 320 or 640. So the
check tries, in order and within its sandbox limits: the owner's shape (``--input-shape`` /
``input_shape``), else the exporter's metadata (ultralytics writes ``imgsz``), then common sizes, and
registration records the first shape that ran (``Model.input_shapes``). Variant builds then profile and
make synthetic validation data at that shape instead of a guess.

Only the dimensions other than the batch axis are resolved here; the batch axis is chosen per query.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Mapping, Sequence

from infaas.errors import BadRequest
from infaas.tensors import TensorSpec

# Square image sizes tried for an input that looks like an image (rank 4, dynamic dims in H and W),
# smallest first so a model that runs at several sizes is checked cheaply: classifiers mostly take 224,
# YOLO exports 320/416/640 (multiples of their stride 32), segmenters 512.
SPATIAL_SIZES = (224, 256, 320, 384, 416, 512, 640)
# Sizes tried for any other dynamic axis (a sequence of tokens or frames); 16 comes first because it is
# what synthetic validation data used before shapes were recorded.
SEQUENCE_SIZES = (16, 32, 64, 128)
# The exporter metadata keys read, with what writes them.
IMAGE_SIZE_KEYS = ("imgsz",)  # ultralytics: "[320, 320]" (height, width) or "640"

Shapes = dict[str, tuple[int, ...]]


class InputShapeError(BadRequest):
    """An ``--input-shape`` / ``input_shape`` value was refused; the message says what to fix."""

    code = "invalid_input_shape"


def parse_input_shapes(entries: str | Iterable[str] | None) -> Shapes:
    """``NAME=1,3,320,320`` entries (a list, or one string with ``;`` between entries) as a name → shape map."""
    if entries is None:
        return {}
    if isinstance(entries, str):
        entries = entries.split(";")
    shapes: Shapes = {}
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        name, sep, dims = entry.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputShapeError(
                f"input shape {entry!r} is not NAME=D0,D1,...: write e.g. images=1,3,320,320 "
                "(separate several inputs with ';' in the input_shape field, or repeat --input-shape)"
            )
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise InputShapeError(
                f"input shape for {name!r} is {dims.strip()!r}: the dimensions must be integers separated by ',', "
                "e.g. images=1,3,320,320"
            ) from None
        if any(d <= 0 for d in shape):
            raise InputShapeError(f"input shape for {name!r} is {list(shape)}: every dimension must be positive")
        if name in shapes:
            raise InputShapeError(f"input {name!r} is given two shapes; give each input once")
        shapes[name] = shape
    return shapes


def check_given_shapes(
    given: Mapping[str, tuple[int, ...]], declared: Mapping[str, tuple[int, ...]], max_elements: int
) -> None:
    """Refuse a given shape that cannot be the model's (an unknown input, the wrong rank, a fixed dim changed)
    or that is larger than the check lets one sample be (``max_elements``); ``declared``: the graph's input
    shapes by name, ``-1`` for a dynamic dimension."""
    for name, shape in given.items():
        if name not in declared:
            raise InputShapeError(
                f"the model has no input {name!r}; its inputs are {', '.join(repr(n) for n in declared)}"
            )
        want = declared[name]
        rendered = [d if d > 0 else "?" for d in want]
        if len(shape) != len(want):
            raise InputShapeError(
                f"input {name!r} has {len(want)} dimensions {rendered}; the shape given has {len(shape)} {list(shape)}"
            )
        for axis, (got, fixed) in enumerate(zip(shape, want, strict=True)):
            if fixed > 0 and got != fixed:
                raise InputShapeError(
                    f"input {name!r} fixes dimension {axis} to {fixed} ({rendered}); the shape given has {got} there"
                )
        elements = math.prod(shape)
        if elements > max_elements:
            raise InputShapeError(
                f"input shape for {name!r} is {list(shape)}: {elements} elements, past the limit of {max_elements} "
                "for one sample"
            )


def needs_resolving(spec: TensorSpec) -> bool:
    """Whether ``spec`` has a dynamic dimension besides the batch axis (dim 0)."""
    return any(d <= 0 for d in spec.shape[1:])


def image_axes(spec: TensorSpec) -> tuple[int, int] | None:
    """The (height, width) axes of an input that looks like an image: rank 4, channels fixed, H/W dynamic."""
    if len(spec.shape) != 4:
        return None
    dynamic = {axis for axis, d in enumerate(spec.shape) if d <= 0 and axis > 0}
    if spec.shape[1] > 0 and dynamic <= {2, 3}:
        return (2, 3)
    if spec.shape[3] > 0 and dynamic <= {1, 2}:
        return (1, 2)
    return None


def metadata_image_size(metadata: Mapping[str, str]) -> tuple[int, int] | None:
    """(height, width) from the exporter's metadata (``imgsz``), or ``None`` when absent or unreadable."""
    for key in IMAGE_SIZE_KEYS:
        raw = metadata.get(key)
        if raw is None:
            continue
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            continue
        sizes = [value] if isinstance(value, int) else list(value) if isinstance(value, list | tuple) else []
        if len(sizes) in (1, 2) and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            return (sizes[0], sizes[-1])
    return None


def _shape_at(spec: TensorSpec, image: tuple[int, int] | None, sequence: int) -> tuple[int, ...]:
    """``spec``'s shape with batch 1 and each other dynamic dim set to ``image`` (H, W) or ``sequence``."""
    axes = image_axes(spec)
    dims = []
    for axis, d in enumerate(spec.shape):
        if d > 0:
            dims.append(d)
        elif axis == 0:
            dims.append(1)
        elif axes is not None and image is not None and axis in axes:
            dims.append(image[axes.index(axis)])
        else:
            dims.append(sequence)
    return tuple(dims)


def candidate_shapes(
    inputs: Sequence[TensorSpec], given: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]
) -> list[Shapes]:
    """The shapes to try, in order, one map of every input each: the owner's, the metadata's, then common sizes.

    An input whose only dynamic dim is the batch axis gets batch 1 in every try, as before; an input the
    owner gave a shape for keeps that shape in every try. With nothing to resolve there is one try.
    """
    open_inputs = [s for s in inputs if needs_resolving(s) and s.name not in given]
    images: list[tuple[int, int] | None] = []
    if any(image_axes(s) for s in open_inputs):
        hinted = metadata_image_size(metadata)
        images = ([hinted] if hinted else []) + [(s, s) for s in SPATIAL_SIZES if (s, s) != hinted]
    sequences = list(SEQUENCE_SIZES) if any(image_axes(s) is None for s in open_inputs) else []
    tries = max(len(images), len(sequences), 1)
    candidates: list[Shapes] = []
    for k in range(tries):
        image = images[min(k, len(images) - 1)] if images else None
        sequence = sequences[min(k, len(sequences) - 1)] if sequences else 1
        shapes = {s.name: tuple(given.get(s.name) or _shape_at(s, image, sequence)) for s in inputs}
        if shapes not in candidates:
            candidates.append(shapes)
    return candidates


def describe(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """``images=1,3,320,320`` entries, as the ``--input-shape`` option takes them."""
    return "; ".join(f"{name}={','.join(str(d) for d in shape)}" for name, shape in shapes.items())
