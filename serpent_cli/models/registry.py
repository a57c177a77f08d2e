"""The one registry of model names: what each named model is and supports; every other layer asks it.

timm-style (models register into one table; :func:`serpent_cli.create_model` asks it) with a
spandrel-style descriptor per name (:class:`ModelInfo`: the Serpent config, whether `serpent train`
takes it, whether trained weights ship and with which sha256, where it stands in the default order of
`serpent deblur` / `serpent eval`, whether it needs the optional spandrel package).  The Serpent
variants, the trainable models, the bench line-up, the default order and the weights registry
(:mod:`serpent_cli.hub.registry`) are all views of this table, so a new model is one entry here.

Torch is not imported here: names, descriptors and configs answer a usage error in milliseconds;
the network classes are imported when a model is first built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serpent_cli.errors import UsageError
from serpent_cli.models.config import SerpentConfig

if TYPE_CHECKING:
    from torch import nn

ModelFactory = Callable[..., "nn.Module"]


@dataclass(frozen=True)
class ModelInfo:
    """One named model: how to build it (random init) and what it supports."""

    name: str
    description: str
    build: ModelFactory  # keyword overrides of the architecture; fresh random weights
    family: str  # "serpent", "unet" or "spandrel" (third-party peers for `serpent bench`)
    config: SerpentConfig | None = None  # Serpent variants only
    trainable: bool = False  # `serpent train --model` accepts it
    weights_sha256: str | None = None  # pin of the trained weights we ship (None: none ship)
    default_rank: int | None = None  # position in the default choice of deblur / eval (None: never the default)
    needs_spandrel: bool = False  # built from the optional `bench` extra
    in_bench: bool = True  # one of `serpent bench`'s models (not for a second set of weights of one architecture)
    degradation: str = "benchmark"  # what its weights learn to undo; `serpent train --model NAME` defaults to it

    @property
    def purpose(self) -> str:
        """What the model is for, in a user's words: "the benchmark blur", "everyday photos"."""
        return TRAINED_FOR.get(self.degradation, (self.degradation, ""))[0]

    @property
    def trained_for(self) -> str:
        """:attr:`purpose` with what that means ("everyday photos (any blur kind or none, noise, JPEG)")."""
        detail = TRAINED_FOR.get(self.degradation, (self.degradation, ""))[1]
        return f"{self.purpose} ({detail})" if detail else self.purpose

    @property
    def patch_size(self) -> int | None:
        """Output patch size P of a Serpent variant (its grid period); None for models without patches."""
        return self.config.patch_size if self.config is not None else None

    @property
    def ships_weights(self) -> bool:
        """Trained weights for this name ship in ``weights/`` and are pinned by sha256."""
        return self.weights_sha256 is not None


_REGISTRY: dict[str, ModelInfo] = {}

TRAINED_FOR = {
    "benchmark": ("the benchmark blur", "Gaussian sigma 3 + noise 0.05"),
    "blind": ("everyday photos", "any blur kind or none, noise, JPEG"),
}
"""What a model trained on each degradation (``serpent_cli.degradation``) is for, in a user's words, and its detail."""


def register_model(name: str, factory: ModelFactory, **fields: Any) -> ModelInfo:
    """Make ``name`` buildable with :func:`serpent_cli.create_model`; ``fields`` fill its :class:`ModelInfo`."""
    info = ModelInfo(name=name, description=fields.pop("description", name), build=factory,
                     family=fields.pop("family", "custom"), **fields)
    _REGISTRY[name] = info
    return info


def model_info(name: str) -> ModelInfo:
    """The descriptor of ``name``; a KeyError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def registered() -> list[ModelInfo]:
    """Every descriptor, in registration order (Serpent variants, U-Nets, then peers)."""
    return list(_REGISTRY.values())


def list_models(*, include_peers: bool = False) -> list[str]:
    """Names :func:`serpent_cli.create_model` builds, sorted; ``include_peers`` adds the spandrel peers."""
    return sorted(n for n, info in _REGISTRY.items() if include_peers or not info.needs_spandrel)


def variants() -> dict[str, SerpentConfig]:
    """The Serpent variants by name (what ``serpent_cli.VARIANTS`` is)."""
    return {n: info.config for n, info in _REGISTRY.items() if info.config is not None}


def trainable_models() -> list[str]:
    """Names `serpent train --model` accepts, in registration order."""
    return [n for n, info in _REGISTRY.items() if info.trainable]


def shipped_models() -> list[ModelInfo]:
    """Models whose trained weights ship (bundled and pinned), in registration order."""
    return [info for info in _REGISTRY.values() if info.ships_weights]


def default_order() -> tuple[str, ...]:
    """Without --model, `serpent deblur` and `serpent eval` use the first of these whose weights are here."""
    ranked = sorted((info.default_rank, n) for n, info in _REGISTRY.items() if info.default_rank is not None)
    return tuple(n for _, n in ranked)


def model_choice_help() -> str:
    """The ``--model`` help of deblur / eval: which shipped model is for what, and which one is the default."""
    ranked = sorted(shipped_models(), key=lambda info: (info.default_rank is None, info.default_rank or 0))
    groups: dict[str, list[str]] = {}
    for info in ranked:
        groups.setdefault(info.trained_for, []).append(info.name)
    order = default_order()
    return "; ".join(f"{', '.join(names)}: {purpose}" for purpose, names in groups.items()) + (
        f". Default: the first found of {', '.join(order)}." if order else ".")


def alternative_for_photos(name: str) -> str | None:
    """A shipped model trained on another degradation than ``name``'s (serpent-l -> serpent-l-blind), if any."""
    chosen = model_info(name)
    return next((info.name for info in shipped_models() if info.degradation != chosen.degradation), None)


def check_variant(name: str | None) -> None:
    """A ``--model`` naming no Serpent variant is a usage error (checked before anything is loaded)."""
    known = variants()
    if name is not None and name not in known:
        raise UsageError(f"unknown --model {name!r}; choose one of {', '.join(known)}")


def build_model(name: str, **overrides: Any) -> nn.Module:
    """A freshly initialised model by name; ``overrides`` change architecture fields."""
    return model_info(name).build(**overrides)


# ----------------------------------------------------------------------------- the built-in models


def _serpent(config: SerpentConfig) -> ModelFactory:
    def build(**overrides: Any) -> nn.Module:
        from serpent_cli.models.serpent import Serpent

        return Serpent(dataclasses.replace(config, **overrides))

    return build


def _unet(width: int) -> ModelFactory:
    def build(**overrides: Any) -> nn.Module:
        from serpent_cli.models.unet import UNet

        return UNet(channels=width, **overrides)

    return build


def _spandrel(name: str) -> ModelFactory:
    def build(**overrides: Any) -> nn.Module:
        from serpent_cli.models.peers import build_spandrel

        return build_spandrel(name, **overrides)

    return build


def _register_serpent(name: str, patch_size: int, description: str, sha256: str, rank: int | None,
                      in_bench: bool = True, degradation: str = "benchmark") -> None:
    config = SerpentConfig(name=name, patch_size=patch_size)
    register_model(name, _serpent(config), family="serpent", description=description, config=config,
                   trainable=True, weights_sha256=sha256, default_rank=rank, in_bench=in_bench,
                   degradation=degradation)


# sha256 of each shipped weights file: `python -m serpent_cli.hub.registry` prints the values after training.
# Default order: serpent-l first, since in the paper it is within 0.1 dB of serpent-h at a quarter of its cost
# and clearly better than serpent-b; on a CPU it is still practical for photos.
_register_serpent("serpent-b", 4, "Serpent, patch 4",
                  "d74b2b43b12f79f44e6360586daf147ba72bab02d9d08ad4a9f0a523b9dd39ed", rank=1)
_register_serpent("serpent-l", 2, "Serpent, patch 2",
                  "a8a964d1a8a3390bd67f3b4812f20c8fbef3e2ea0ac2d71e42c8b4863c2ff5a5", rank=0)
_register_serpent("serpent-h", 1, "Serpent, patch 1",
                  "40116ec29a447ce2bb0fcac694424fb93ae6537f2b15b098570f8713b377ef9f", rank=2)
# serpent-l's architecture, trained on the blind degradation family (real photos), not the benchmark.
_register_serpent("serpent-l-blind", 2, "Serpent, patch 2, trained on the blind family",
                  "6074e9f10c812701c8be346e28c531b4b0f677abbf39b4765d7291c15d4a9d0e", rank=None, in_bench=False,
                  degradation="blind")
for _width in (32, 64, 128):
    register_model(f"unet-{_width}", _unet(_width), family="unet", description=f"U-Net, {_width} channels",
                   trainable=True)
register_model("swinir-b", _spandrel("swinir-b"), family="spandrel", needs_spandrel=True,
               description="SwinIR, embed 96, depths 6x6, heads 6, window 8, mlp 2")
register_model("swinir-l", _spandrel("swinir-l"), family="spandrel", needs_spandrel=True,
               description="SwinIR, embed 180, depths 6x6, heads 6, window 8, mlp 2")
register_model("nafnet-32", _spandrel("nafnet-32"), family="spandrel", needs_spandrel=True,
               description="NAFNet, width 32, GoPro layout")

VARIANTS: dict[str, SerpentConfig] = variants()
"""The built-in Serpent variants by name (``serpent_cli.VARIANTS``); :func:`variants` also sees later registrations."""
