"""Label tables: what each integer of a label map means."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from medseg.core.errors import InputError

__all__ = ["Code", "Label", "LabelTable", "default_color", "known_codes"]

# A colour cycle with good contrast on grey images (index 1 → first colour).
_PALETTE = [
    (230, 80, 60), (80, 170, 230), (240, 200, 40), (120, 200, 90), (190, 90, 220),
    (250, 140, 30), (40, 200, 190), (240, 110, 170), (150, 120, 60), (110, 110, 250),
    (200, 230, 120), (220, 60, 120),
]


def default_color(index: int) -> tuple[int, int, int]:
    """RGB colour (0–255) for a label index, cycling through a fixed palette."""
    return _PALETTE[(index - 1) % len(_PALETTE)]


@dataclass(frozen=True)
class Code:
    """A coded concept, e.g. SNOMED CT ``Code("10200004", "SCT", "Liver")``."""

    value: str
    scheme: str
    meaning: str


#: SNOMED CT "Anatomical Structure" / "Morphologically Altered Structure" categories.
ANATOMY = Code("123037004", "SCT", "Anatomical Structure")
MORPHOLOGY = Code("49755003", "SCT", "Morphologically Altered Structure")


# SNOMED CT codes for structure names medseg's models and tools use, so that a label table
# built from names alone still exports as a standard DICOM SEG / RTSTRUCT. Data only.
_ANATOMY = {
    "liver": ("10200004", "Liver"),
    "spleen": ("78961009", "Spleen"),
    "kidney_right": ("9846003", "Right kidney"),
    "kidney_left": ("18639004", "Left kidney"),
    "kidney": ("64033007", "Kidney"),
    "aorta": ("15825003", "Aorta"),
    "pancreas": ("15776009", "Pancreas"),
    "stomach": ("69695003", "Stomach"),
    "gallbladder": ("28231008", "Gallbladder"),
    "inferior_vena_cava": ("64131007", "Inferior vena cava"),
    "adrenal_gland_right": ("281625004", "Right adrenal gland"),
    "adrenal_gland_left": ("281624000", "Left adrenal gland"),
    "esophagus": ("32849002", "Esophagus"),
    "duodenum": ("38848004", "Duodenum"),
    "colon": ("71854001", "Colon"),
    "urinary_bladder": ("89837001", "Urinary bladder"),
    "prostate": ("41216001", "Prostate"),
    "brain": ("12738006", "Brain"),
    "heart": ("80891009", "Heart"),
    "lung_left": ("44029006", "Left lung"),
    "lung_right": ("3341006", "Right lung"),
    "body": ("38266002", "Entire body"),
}
_LESIONS = {
    "tumor": ("108369006", "Neoplasm"),
    "tumour": ("108369006", "Neoplasm"),
    "liver_tumor": ("108369006", "Neoplasm"),
    "lesion": ("52988006", "Lesion"),
}


def known_codes(name: str) -> tuple[Optional["Code"], Optional["Code"]]:
    """SNOMED CT ``(type, category)`` codes for a common structure name, else ``(None, None)``."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key in _ANATOMY:
        return Code(_ANATOMY[key][0], "SCT", _ANATOMY[key][1]), ANATOMY
    if key in _LESIONS:
        return Code(_LESIONS[key][0], "SCT", _LESIONS[key][1]), MORPHOLOGY
    return None, None


@dataclass(frozen=True)
class Label:
    """One entry of a label table.

    Parameters
    ----------
    index : int
        Value in the label map (1..65535; 0 is background and never listed).
    name : str
        Human-readable name, unique within a table.
    color : (3,) ints
        RGB, 0–255.
    code : Code, optional
        Segmented property type (SNOMED CT for DICOM SEG).
    category : Code, optional
        Segmented property category (SNOMED CT).
    """

    index: int
    name: str
    color: tuple[int, int, int] = (255, 0, 0)
    code: Optional[Code] = None
    category: Optional[Code] = None

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or not 1 <= self.index <= 65535:
            raise InputError(f"label index must be an int in 1..65535 (0 is background), got {self.index!r}")
        if not self.name or not isinstance(self.name, str):
            raise InputError(f"label {self.index} needs a non-empty name, got {self.name!r}")
        color = tuple(int(c) for c in self.color)
        if len(color) != 3 or any(not 0 <= c <= 255 for c in color):
            raise InputError(f"label {self.name!r} colour must be 3 ints in 0..255, got {self.color!r}")
        object.__setattr__(self, "color", color)


@dataclass(frozen=True)
class LabelTable:
    """An ordered set of labels with unique indices and names."""

    labels: tuple[Label, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        labels = tuple(sorted(self.labels, key=lambda l: l.index))
        idx = [l.index for l in labels]
        names = [l.name for l in labels]
        if len(set(idx)) != len(idx):
            raise InputError(f"label indices must be unique, got {idx}")
        if len(set(names)) != len(names):
            raise InputError(f"label names must be unique, got {names}")
        object.__setattr__(self, "labels", labels)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_names(cls, names: Sequence[str] | Mapping[int, str]) -> "LabelTable":
        """Table from names (indices 1, 2, ...) or an ``{index: name}`` mapping."""
        items = names.items() if isinstance(names, Mapping) else enumerate(names, start=1)
        return cls(tuple(Label(int(i), str(n), default_color(int(i)), *known_codes(str(n))) for i, n in items))

    @classmethod
    def from_dict(cls, data: Mapping | Sequence) -> "LabelTable":
        """Parse the JSON form written by :meth:`to_dict`, or a plain ``{"1": "liver"}`` map."""
        if isinstance(data, Mapping) and "labels" in data:
            data = data["labels"]
        if isinstance(data, Mapping):
            return cls.from_names({int(k): v for k, v in data.items() if int(k) != 0})
        out = []
        for item in data:
            code = Code(**item["code"]) if item.get("code") else None
            cat = Code(**item["category"]) if item.get("category") else None
            idx = int(item["index"])
            out.append(Label(idx, item["name"], tuple(item.get("color", default_color(idx))), code, cat))
        return cls(tuple(out))

    @classmethod
    def read(cls, path: str | Path) -> "LabelTable":
        """Read a label-table JSON file."""
        from medseg.core.errors import FileFormatError

        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError) as exc:
            # any malformed structure (a string where an entry should be, a huge number, ...) is a bad table
            raise FileFormatError(path, f"not a valid label table ({type(exc).__name__}: {str(exc)[:200]})",
                                  'expected {"labels": [{"index": 1, "name": "liver", "color": [r, g, b]}]}') from exc

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {"labels": [
            {k: v for k, v in asdict(l).items() if v is not None} | {"color": list(l.color)}
            for l in self.labels
        ]}

    def write(self, path: str | Path) -> None:
        """Write the table as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    # -- access -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Label]:
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, index: object) -> bool:
        return any(l.index == index for l in self.labels)

    @property
    def indices(self) -> list[int]:
        return [l.index for l in self.labels]

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.labels]

    @property
    def max_index(self) -> int:
        return max(self.indices, default=0)

    def __getitem__(self, index: int) -> Label:
        for l in self.labels:
            if l.index == index:
                return l
        raise KeyError(f"no label with index {index}; the table has {self.indices}")

    def by_name(self, name: str) -> Label:
        for l in self.labels:
            if l.name == name:
                return l
        raise KeyError(f"no label named {name!r}; the table has {self.names}")

    def with_label(self, label: Label) -> "LabelTable":
        """A new table with ``label`` added or replacing the one of the same index."""
        return LabelTable(tuple(l for l in self.labels if l.index != label.index) + (label,))

    def next_index(self) -> int:
        return self.max_index + 1

    def subset(self, indices: Iterable[int]) -> "LabelTable":
        keep = set(indices)
        return LabelTable(tuple(l for l in self.labels if l.index in keep))
