"""maxlm: curate, pretrain, fine-tune, align, evaluate and export Llama-family models in JAX."""


def __getattr__(name: str):
    # Lazy (PEP 562): `import maxlm` stays cheap; jax and flax load on first use of the model API.
    if name == "from_pretrained":
        from maxlm.infer.pretrained import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'maxlm' has no attribute {name!r}")
