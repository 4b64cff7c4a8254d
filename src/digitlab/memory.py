"""Will it fit? Before any work, every network params.yaml names is built from its registry on
torch's meta device (shapes only, no memory), so an unknown name or a network or batch too big
for this machine is refused in one line naming the key, exactly for every network. A network
whose weights are small is then built on the CPU, and its layer outputs counted on one image
there (a meta forward pass first loads torch's decompositions, over a second per process); a
bigger one is counted on the meta device."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from digitlab.models import (
    CLASSIFIERS,
    GANS,
    build_classifier,
    build_discriminator,
    build_generator,
)
from digitlab.params import TRAIN_IMAGES, Params, ParamsError, input_shape, shown

FLOAT_BYTES = 4
TRAIN_COPIES = 5  # weights, gradients, Adam's two moments, the GAN's moving average
META = torch.device("meta")
CPU_COUNT_LIMIT = 64 * 2**20  # weights up to this many bytes are counted on the CPU


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit if lower."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):
        memory = min(memory, int(Path("/sys/fs/cgroup/memory.max").read_text()))
    return memory


def activations_per_image(model: nn.Module, *inputs: torch.Tensor | None) -> int:
    """Floats one image leaves behind in a forward pass: the input and every layer's output
    (what backward keeps), counted on one image (meta tensors, or CPU ones for a CPU model)."""
    counted = [sum(x.numel() for x in inputs if x is not None and x.is_floating_point())]

    def count(module: nn.Module, args: object, output: torch.Tensor) -> None:
        counted.append(output.numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return sum(counted)


def _built(build: Callable[..., nn.Module], *args: object) -> nn.Module:
    """build(*args) on the meta device; built again on the CPU when its weights are small (the
    global random state left as it was), so that its layer outputs are counted there."""
    with torch.device(META):
        model = build(*args)
    if _n_weights(model) * FLOAT_BYTES > CPU_COUNT_LIMIT:
        return model
    with torch.random.fork_rng(devices=[]):
        return build(*args)


def _counted(model: nn.Module, *inputs: torch.Tensor | None) -> int:
    """activations_per_image of a network _built made, for inputs on the CPU. Layer outputs of
    one image are small whatever params allow (hidden sizes and channels are bounded)."""
    device = next(model.parameters()).device
    return activations_per_image(model, *(None if x is None else x.to(device) for x in inputs))


def _n_weights(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _sizes(params: Params) -> list[tuple[str, str, int, str, int, int]]:
    """(what, key of its size, parameters, key of its batch, batch, floats per image) of each
    network training builds (_built)."""
    c, gan = params.classifier, params.gan
    shape = input_shape(params.data.dataset)
    n_train = TRAIN_IMAGES[params.data.dataset] - params.data.val_size
    batch = n_train if c.batch_size == 0 else min(c.batch_size, n_train)
    g_config, d_config = gan.generator_config(), gan.discriminator_config()
    classifier = _built(build_classifier, c.architecture(), shape)
    G, D = _built(build_generator, g_config), _built(build_discriminator, d_config)
    image, z = torch.zeros(1, *shape), torch.zeros(1, gan.latent_size)
    digit = torch.zeros(1, dtype=torch.long) if gan.conditional else None
    fake = torch.zeros(1, 1, 28, 28)
    per_gan_image = _counted(G, z, digit) + 2 * _counted(D, fake, digit)
    gan_batch = min(gan.batch_size, TRAIN_IMAGES["mnist"])
    return [
        (
            "the classifier",
            type(classifier).SIZE_KEY,
            _n_weights(classifier),
            "classifier.batch_size",
            batch,
            _counted(classifier, image),
        ),
        (
            "the discriminator",
            type(D).SIZE_KEY,
            _n_weights(D),
            "gan.batch_size",
            gan_batch,
            per_gan_image,
        ),
        (
            "the generator",
            type(G).SIZE_KEY,
            _n_weights(G),
            "gan.batch_size",
            gan_batch,
            per_gan_image,
        ),
    ]


def check_device(params: Params, source: str = "params.yaml") -> None:
    """Refuse `device: cuda` where torch sees no CUDA device, naming what torch is."""
    if params.device == "cuda" and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ParamsError(
            f"{source}: device = 'cuda' is not allowed: torch {torch.__version__} ({build}) sees "
            "no CUDA device here; set device: auto (the CPU here) or cpu"
        )


def check_networks(params: Params, memory: int | None = None, source: str = "params.yaml") -> None:
    """Refuse, before any work, a network no registry names, or one or a batch that cannot be
    trained in `memory` bytes (this machine's): half of it for the networks (TRAIN_COPIES
    copies of the weights), half for one batch's activations (forward values and gradients)."""
    memory = machine_memory() if memory is None else memory
    budget, gigabytes = memory // 2, f"{memory / 1e9:.0f} GB"
    for key, name, registry in (
        ("classifier.arch", params.classifier.arch, CLASSIFIERS),
        ("gan.arch", params.gan.arch, GANS),
    ):
        if name not in registry:
            raise ParamsError(
                f"{source}: {key} = {shown(name)} is not allowed: must be one of "
                f"{', '.join(registry)} (the networks of digitlab.models)"
            )
    sizes = _sizes(params)
    for what, key, weights, batch_key, batch, per_image in sizes:
        if weights * FLOAT_BYTES * TRAIN_COPIES > budget:
            raise ParamsError(
                f"{source}: {key} makes {what} too big: {weights:,} parameters need "
                f"{weights * FLOAT_BYTES * TRAIN_COPIES / 1e9:,.0f} GB to train, more than half "
                f"of this machine's {gigabytes} of memory"
            )
        needed = 2 * batch * per_image * FLOAT_BYTES
        if needed > budget:
            raise ParamsError(
                f"{source}: {batch_key} gives batches of {batch:,} images whose activations "
                f"need {needed / 1e9:,.0f} GB, more than half of this machine's {gigabytes} of "
                "memory: use smaller batches"
            )
