"""The network and everything that travels with it.

Open, by task:

* ``architectures``: the networks (backbone -> pool -> linear head) and their Grad-CAM layers; ``pretrained``:
  the offline ImageNet start; ``features``: the one forward pass giving logits and pooled features;
* ``card``: the typed :class:`~core.model.card.ModelCard` (``model_card.json``); ``checkpoint``: saving and
  loading a bundle (safetensors + card); ``integrity``: SHA-256 checks of weight files; ``registry``: the
  shipped bundles, found by their cards;
* ``device``: the one place that picks cuda / mps / cpu; ``backends``: the precision policy (fp32, bf16, AMP,
  int8, ``torch.compile``) and the module built for it; ``int8``: static int8 quantisation; ``tta``: the
  left-right mirror average.
"""
