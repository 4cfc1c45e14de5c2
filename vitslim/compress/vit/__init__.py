"""ViT surgery shared by the compression families: reversible class patches of timm's
VisionTransformer / Block / Attention (:mod:`.patching`) and the attention computation they
share (:mod:`.attention`)."""
