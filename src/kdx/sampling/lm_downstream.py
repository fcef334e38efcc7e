"""Another corpus or domain for causal LMs: windows of a second corpus (any format lm_text reads,
tokenized with the run's tokenizer, all its documents) or of one of the run's extra splits
(`domain_train`: the train documents' shifted-domain texts, e.g. the Debian synopses); served like
`corpus`, every real position counted."""
from __future__ import annotations

from kdx.data.base import Dataset
from kdx.data.lm_text import read_documents, windows
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.lm_corpus import CorpusSource


@SOURCES.register(context=("data", "seed"))
def lm_downstream(data: Dataset, seed: int, path: str = "", text_column: str = "text", split: str = "domain_train",
                  max_windows: int = 0) -> CorpusSource:
    """LM: windows of another corpus (path) or of the run's own extra split (split=domain_train), teacher-forced."""
    data.require("lm", "source 'lm_downstream'", "source downstream")
    if path:
        docs = [d.text for d in read_documents(path, text_column) if d.text.strip()]
        if not docs:
            raise KdxError(f"source 'lm_downstream': {path} holds no non-empty document")
        tok = data.tokenizer
        x, _ = windows(tok.ids(docs), data.max_length, tok.eos_id, tok.pad_id, max_windows)
        return CorpusSource(data, seed, windows=x)
    splits = [k for k in data.extra if not k.startswith("prompts_")]
    if split not in splits:
        raise KdxError(f"source 'lm_downstream': dataset '{data.name}' has no split '{split}' (it has "
                       f"{', '.join(splits) or 'none'}: set data.domain_column), or give path=ANOTHER_CORPUS")
    return CorpusSource(data, seed, windows=data.extra[split][0])
