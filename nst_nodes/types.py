"""The types that cross node boundaries, in one place.

``IMAGE``          ComfyUI's image: float32 ``[B, H, W, 3]``, RGB, 0..1, on the CPU.
``NST_MODEL``      :class:`nst_nodes.vgg.VGGModel`: a frozen VGG19 plus the preprocessing its
                   weights were trained with and an ``identity`` string (weights/preprocessing/pooling).
                   Kept in memory only: rebuilding it from the weights file takes well under a second.
``NST_TENSOR``     an image in a model's input space: ``{"space": identity, "pixels": [1, 3, H, W]}``.
                   ``space`` is the identity of the model that normalized it, so no node can
                   pair it with another model's preprocessing.
``NST_FEATURES``   ``{"model": identity, "layers": {layer name: [1, C, H, W] activation}}``.
``NST_GRAMS``      ``{"model": identity, "layers": {layer name: [C, C] Gram matrix}}`` (see
                   :func:`nst_nodes.losses.gram_matrix` for the normalization).
``NST_LOSS``       an objective: ``{"model": identity, "terms": [term, ...]}`` where a term is
                   ``{"kind": "content"|"style", "weight": float, "targets": {layer: tensor},
                   "layer_weights": {layer: float}}`` or ``{"kind": "tv", "weight": float}``.
``NST_HISTORY``    ``{"loss": [...], "content": [...], "style": [...], "tv": [...]}``: one value per
                   evaluated iterate (the weighted terms), plus ``"method"`` and ``"steps"``.

Tensors inside NST_* values may live on any device; a consumer moves them to its own.
All NST_* values except NST_MODEL are tensors and JSON-able values, so the runner caches them on disk.
"""

from __future__ import annotations

from typing import Any

IMAGE = "IMAGE"
NST_MODEL = "NST_MODEL"
NST_TENSOR = "NST_TENSOR"
NST_FEATURES = "NST_FEATURES"
NST_GRAMS = "NST_GRAMS"
NST_LOSS = "NST_LOSS"
NST_HISTORY = "NST_HISTORY"

Term = dict[str, Any]
Objective = dict[str, Any]
