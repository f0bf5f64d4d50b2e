"""seqserve: sequence models from PyTorch training to production inference."""

__version__ = "0.1.0"


def export_module(model, out, *, task: str, tokenizer, adapter=None, labels=None, source=None, options=None,
                  progress=None):
    """Export your own nn.Module (weights loaded) to an export folder; see seqserve.adapters.export_module.
    tokenizer: a seqserve tokenizer, or a path for seqserve.data.load_tokenizer (tokenizer.json,
    a vocabulary file, 'bytes')."""
    from seqserve.adapters import export_module as export
    from seqserve.data import load_tokenizer

    tok = load_tokenizer(str(tokenizer)) if isinstance(tokenizer, (str, bytes)) or hasattr(tokenizer, "__fspath__") \
        else tokenizer
    return export(model, out, task=task, tokenizer=tok, adapter=adapter, labels=labels, source=source,
                  options=options, progress=progress)
