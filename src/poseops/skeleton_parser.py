"""Reading a skeleton spec: YAML with line numbers, and every check a spec must pass.

A bad spec (duplicate names, an edge to an unknown keypoint, an asymmetric flip pair, a
bad colour, position, sigma or box setting) is refused with a message naming the file
and the line. The model it builds is `poseops.skeleton`'s.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

from poseops.skeleton import (
    BOX_LABELED,
    BOX_MODES,
    DEFAULT_BOX_PADDING,
    DEFAULT_EDGE_COLOR,
    DEFAULT_SIGMA,
    MAX_BOX_PADDING,
    MAX_SIGMA,
    PALETTE,
    Connection,
    Keypoint,
    Skeleton,
    SkeletonClass,
    SkeletonError,
)

COLOR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .-]{0,63}$")  # at most 64 characters

class _Node:
    """Mixin giving parsed YAML containers the line they start on."""

    line: int = 0


class _Map(dict, _Node):
    pass


class _List(list, _Node):
    pass


class _LineLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        m = _Map(super().construct_mapping(node, deep=True))
        m.line = node.start_mark.line + 1
        return m

    def construct_sequence(self, node, deep=False):  # type: ignore[override]
        s = _List(super().construct_sequence(node, deep=True))
        s.line = node.start_mark.line + 1
        return s


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _LineLoader.construct_sequence)


def parse_spec_text(text: str, source: str = "<string>") -> Skeleton:
    """Parse and validate a skeleton spec given as YAML text."""
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SkeletonError(f"{source}: not valid YAML: {e}") from None
    return _Parser(source).spec(doc)


class _Parser:
    def __init__(self, source: str):
        self.source = source

    def fail(self, node: Any, message: str) -> SkeletonError:
        line = getattr(node, "line", 0)
        where = f"{self.source}:{line}" if line else self.source
        return SkeletonError(f"{where}: {message}")

    def spec(self, doc: Any) -> Skeleton:
        if isinstance(doc, dict) and "classes" not in doc and "keypoints" in doc:
            doc = _Map(classes=_List([doc]))  # a single class at top level
        if not isinstance(doc, dict) or "classes" not in doc:
            raise self.fail(doc, "expected a mapping with a 'classes' list (see label_config/skeletons/person.yaml)")
        self.unknown_keys(doc, {"classes"}, "the spec")
        raw_classes = doc["classes"]
        if not isinstance(raw_classes, list) or not raw_classes:
            raise self.fail(raw_classes if isinstance(raw_classes, list) else doc, "'classes' must be a non-empty list")
        classes: list[SkeletonClass] = []
        for n, raw in enumerate(raw_classes):
            cls = self.cls(raw, n)
            if any(c.name == cls.name for c in classes):
                raise self.fail(raw, f"class name {cls.name!r} is used twice; class names must be unique")
            classes.append(cls)
        first = classes[0]
        for cls, raw in zip(classes[1:], raw_classes[1:], strict=True):
            if len(cls.keypoints) != len(first.keypoints):
                raise self.fail(
                    raw,
                    f"class {cls.name!r} has {len(cls.keypoints)} keypoints but {first.name!r} has "
                    f"{len(first.keypoints)}; YOLO-pose needs one keypoint count (kpt_shape) for all classes "
                    "in a spec: split them into separate specs or pad the shorter one",
                )
            if cls.flip_idx != first.flip_idx:
                raise self.fail(
                    raw,
                    f"class {cls.name!r} pairs its keypoints left/right at other positions than {first.name!r}; "
                    "YOLO-pose uses one flip_idx for all classes: order the keypoints so the pairs line up",
                )
            self.same_sigmas(cls, first, raw)
        return Skeleton(classes=tuple(classes), source=self.source)

    def same_sigmas(self, cls: SkeletonClass, first: SkeletonClass, raw: Any) -> None:
        """A later class's explicit sigmas must be the first class's (YOLO-pose has one sigma per position)."""
        for kp, mine, theirs in zip(cls.keypoints, cls.oks_sigmas, first.oks_sigmas, strict=True):
            if kp.sigma is not None and not math.isclose(mine, theirs):
                raise self.fail(
                    raw,
                    f"keypoint {kp.name!r} of class {cls.name!r} has sigma {mine:g} but the keypoint at its position "
                    f"in {first.name!r} has {theirs:g}; YOLO-pose uses one OKS sigma per keypoint position for all "
                    "classes: give the first class the sigma, and the others none or the same",
                )

    def unknown_keys(self, node: dict, allowed: set[str], what: str) -> None:
        extra = sorted(set(node) - allowed)
        if extra:
            raise self.fail(node, f"unknown key {extra[0]!r} in {what} (allowed: {', '.join(sorted(allowed))})")

    def name(self, node: Any, value: Any, what: str) -> str:
        if not isinstance(value, str) or not NAME.match(value):
            shown = repr(value) if len(str(value)) <= 80 else f"{str(value)[:80]!r}... ({len(str(value))} characters)"
            raise self.fail(node, f"{what} {shown} must be a non-empty name of at most 64 letters, digits, '_', '-', '.' or spaces")
        return value

    def color(self, node: Any, value: Any, default: str, what: str) -> str:
        if value is None:
            return default
        if not isinstance(value, str) or not COLOR.match(value):
            raise self.fail(node, f"bad colour {value!r} for {what}: use '#rrggbb' or '#rgb' (quote it in YAML)")
        return value.lower()

    def cls(self, raw: Any, n: int) -> SkeletonClass:
        if not isinstance(raw, dict):
            raise self.fail(raw, f"class #{n + 1} must be a mapping with name and keypoints")
        self.unknown_keys(raw, {"name", "color", "keypoints", "connections", "flip_pairs", "box", "box_padding"},
                          f"class #{n + 1}")
        name = self.name(raw, raw.get("name"), "class name")
        color = self.color(raw, raw.get("color"), PALETTE[n % len(PALETTE)], f"class {name!r}")
        raw_kps = raw.get("keypoints")
        if not isinstance(raw_kps, list) or not raw_kps:
            raise self.fail(raw, f"class {name!r} is empty: list its keypoints under 'keypoints'")
        keypoints = self.keypoints(raw_kps, name)
        names = [k.name for k in keypoints]
        connections = tuple(self.connection(e, names, name) for e in raw.get("connections") or [])
        flip_pairs = self.flip_pairs(raw.get("flip_pairs") or [], names, name)
        box, padding = self.box(raw, name, len(keypoints))
        return SkeletonClass(name, color, keypoints, connections, flip_pairs, box, padding)

    def box(self, raw: dict, cls: str, keypoint_count: int) -> tuple[str, float]:
        """The class's `box` mode and `box_padding`."""
        box = raw.get("box", BOX_LABELED)
        if box not in BOX_MODES:
            raise self.fail(raw, f"box {box!r} of class {cls!r} must be one of {', '.join(BOX_MODES)} (labeled: boxes "
                            "drawn in Label Studio; derived: from the labeled keypoints; either: a drawn box wins)")
        if box != BOX_LABELED and keypoint_count < 2:
            raise self.fail(raw, f"class {cls!r} has box: {box} but {keypoint_count} keypoint; a box is derived from "
                            "at least two keypoints: add keypoints or use box: labeled")
        if "box_padding" not in raw:
            return box, DEFAULT_BOX_PADDING
        padding = raw["box_padding"]
        if box == BOX_LABELED:
            raise self.fail(raw, f"box_padding of class {cls!r} is used only by derived boxes: set box: derived (or "
                            "either), or remove box_padding")
        if (not isinstance(padding, (int, float)) or isinstance(padding, bool) or not math.isfinite(padding)
                or not 0 <= padding <= MAX_BOX_PADDING):
            raise self.fail(raw, f"box_padding {padding!r} of class {cls!r} must be a number from 0 to "
                            f"{MAX_BOX_PADDING:g}: the fraction of the keypoints' extent added on each side "
                            f"(default {DEFAULT_BOX_PADDING})")
        return box, float(padding)

    def keypoints(self, raw_kps: list, cls: str) -> tuple[Keypoint, ...]:
        grid = _grid_positions(len(raw_kps))
        explicit = {str(r.get("color", "")).lower() for r in raw_kps if isinstance(r, dict)}
        free_colors = [c for c in PALETTE if c not in explicit] or list(PALETTE)
        out: list[Keypoint] = []
        for i, raw in enumerate(raw_kps):
            if isinstance(raw, str):
                raw = _Map(name=raw)
                raw.line = getattr(raw_kps, "line", 0)
            if not isinstance(raw, dict):
                raise self.fail(raw_kps, f"keypoint #{i + 1} of class {cls!r} must be a name or a mapping with 'name'")
            self.unknown_keys(raw, {"name", "color", "position", "sigma"}, f"keypoint #{i + 1} of class {cls!r}")
            name = self.name(raw, raw.get("name"), f"keypoint #{i + 1} name of class {cls!r}")
            if any(k.name == name for k in out):
                raise self.fail(raw, f"keypoint {name!r} is listed twice in class {cls!r}; keypoint names must be unique")
            color = self.color(raw, raw.get("color"), free_colors[i % len(free_colors)], f"keypoint {name!r}")
            position = self.position(raw, raw.get("position"), grid[i], name)
            out.append(Keypoint(name, color, position, self.sigma(raw, raw.get("sigma"), name)))
        return tuple(out)

    def sigma(self, node: Any, value: Any, kp: str) -> float | None:
        if value is None:
            return None
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                or not 0 < value <= MAX_SIGMA):
            raise self.fail(node, f"sigma {value!r} of keypoint {kp!r} must be a number above 0 and at most "
                            f"{MAX_SIGMA:g}: its OKS sigma, relative to the object's size (COCO: 0.025 for an eye "
                            f"to 0.107 for a hip; default {DEFAULT_SIGMA})")
        return float(value)

    def position(self, node: Any, value: Any, default: tuple[float, float], kp: str) -> tuple[float, float]:
        if value is None:
            return default
        ok = (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in value)
        )
        if not ok:
            raise self.fail(node, f"position of keypoint {kp!r} must be [x, y] with both between 0 and 1 (fractions of the box)")
        return (float(value[0]), float(value[1]))

    def connection(self, raw: Any, names: list[str], cls: str) -> Connection:
        if isinstance(raw, dict):
            self.unknown_keys(raw, {"from", "to", "color"}, f"a connection of class {cls!r}")
            a, b, color = raw.get("from"), raw.get("to"), raw.get("color")
        elif isinstance(raw, list) and len(raw) in (2, 3):
            a, b, color = raw[0], raw[1], raw[2] if len(raw) == 3 else None
        else:
            raise self.fail(raw, f"connection {raw!r} of class {cls!r} must be [a, b] or [a, b, '#colour']")
        for end in (a, b):
            if end not in names:
                raise self.fail(raw, f"connection [{a}, {b}] of class {cls!r} names unknown keypoint {end!r}")
        if a == b:
            raise self.fail(raw, f"connection [{a}, {b}] of class {cls!r} joins a keypoint to itself")
        return Connection(a, b, self.color(raw, color, DEFAULT_EDGE_COLOR, f"connection [{a}, {b}]"))

    def flip_pairs(self, raw_pairs: Any, names: list[str], cls: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(raw_pairs, list):
            raise self.fail(raw_pairs, f"flip_pairs of class {cls!r} must be a list of [left, right] pairs")
        seen: set[str] = set()
        pairs: list[tuple[str, str]] = []
        for raw in raw_pairs:
            if not (isinstance(raw, list) and len(raw) == 2):
                raise self.fail(raw_pairs, f"flip pair {raw!r} of class {cls!r} must be [left, right]")
            a, b = raw
            for end in (a, b):
                if end not in names:
                    raise self.fail(raw, f"flip pair [{a}, {b}] of class {cls!r} names unknown keypoint {end!r}")
            if a == b:
                raise self.fail(raw, f"flip pair [{a}, {b}] of class {cls!r} pairs a keypoint with itself")
            for end in (a, b):
                if end in seen:
                    raise self.fail(raw, f"keypoint {end!r} of class {cls!r} is in two flip pairs; each keypoint has at most one mirror")
                seen.add(end)
            pairs.append((a, b))
        return tuple(pairs)


def _grid_positions(count: int) -> list[tuple[float, float]]:
    """Default template positions: keypoints spread row by row across the box."""
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    return [
        (round((i % cols + 0.5) / cols, 4), round((i // cols + 0.5) / rows, 4))
        for i in range(count)
    ]
