"""Text classifiers on token ids (N, L) int64, padded with the dataset's pad id (mask = ids != pad).

Same contract as every kdx model: `forward(x, return_features=False)` -> logits, or (logits, the
penultimate features) from the same pass; `body` gives the features and `head` the logits.
`input_embeddings()` is the token embedding table, for teacher-guided token substitutions (hotflip).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdx.data.base import Dataset
from kdx.device import resolve_device
from kdx.errors import KdxError, first_line
from kdx.models.mlm import MLM_SIZES, get_mlm, used_length
from kdx.registry import MODELS

NOT_TEXT = "a text model: bert, bag_of_embeddings or text_cnn"


class TokenClassifier(nn.Module):
    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, pad_id: int, head: nn.Module | None = None):
        super().__init__()
        self.body, self.pad_id = body, pad_id
        self.head = head if head is not None else nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x, x != self.pad_id)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        logits = self.head(f)
        return (logits, f) if return_features else logits

    def input_embeddings(self) -> nn.Embedding:
        return self.body.input_embeddings()


def _need_text(data: Dataset, name: str):
    data.require("text", f"model '{name}'", "cnn, mlp, resnet18, mobilenet_v3_small or vit")


class _BertBody(nn.Module):
    """BERT's encoder and pooler: the features are the pooled [CLS] vector (tanh(W h_CLS))."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, ids, mask):
        # pads come last and are masked: dropping the columns that are pad in every row changes no output
        # and costs the batch's longest text instead of max_length (most descriptions are far shorter).
        # Eager only: the trimmed length depends on the data, which torch.export (ONNX), jit tracing and
        # torch.compile cannot put in a graph, so a traced student keeps every column
        traced = torch.compiler.is_compiling() or torch.jit.is_tracing()
        keep = ids.shape[1] if traced else used_length(mask)
        return self.bert(input_ids=ids[:, :keep], attention_mask=mask[:, :keep].long()).pooler_output

    def input_embeddings(self):
        return self.bert.embeddings.word_embeddings


@MODELS.register(context=("data",))
def bert(data: Dataset, layers: int = 2, hidden: int = 128, heads: int = 2, intermediate: int = 512,
         dropout: float = 0.1, path: str = "", pretrain: dict | None = None) -> TokenClassifier:
    """transformers BertForSequenceClassification from a BertConfig (random init), or a local save_pretrained dir (path).
    `pretrain` ({epochs, corpus, ...}: kdx.models.mlm.MLM_DEFAULTS less the sizes, which are this model's): the
    encoder starts from a masked LM of this size trained once on that corpus (default: the dataset's unlabeled
    texts) and cached, BERT's pretrain-then-fine-tune at a small scale; the classifier head starts at random."""
    from transformers import BertConfig, BertForSequenceClassification

    _need_text(data, "bert")
    if path:
        p = Path(path).expanduser()
        if not (p / "config.json").exists():
            raise KdxError(f"model 'bert': {p} has no config.json; pass a folder written by save_pretrained")
        try:
            m = BertForSequenceClassification.from_pretrained(str(p), num_labels=data.num_classes, local_files_only=True,
                                                              ignore_mismatched_sizes=True)
        except Exception as e:  # noqa: BLE001 - transformers' errors for bad folders vary
            raise KdxError(f"model 'bert': cannot load {p}: {type(e).__name__}: {first_line(e)}") from None
        if m.config.vocab_size < data.vocab_size or m.config.max_position_embeddings < data.max_length:
            raise KdxError(f"model 'bert': {p} takes {m.config.vocab_size} tokens of up to {m.config.max_position_embeddings} "
                           f"positions, the data has {data.vocab_size} and {data.max_length}: tokenise with its "
                           f"tokenizer (data.tokenizer={p})")
        model = TokenClassifier(_BertBody(m.bert), m.config.hidden_size, data.num_classes, data.pad_id,
                                nn.Sequential(m.dropout, m.classifier))
        model.weight_files = [str(p)]  # arrives trained: get_teacher uses it as is
        return model
    if hidden % heads:
        raise KdxError(f"model 'bert': hidden={hidden} must be a multiple of heads={heads}")
    cfg = BertConfig(vocab_size=data.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, max_position_embeddings=data.max_length, type_vocab_size=1,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=data.pad_id,
                     num_labels=data.num_classes)
    cfg._attn_implementation = "sdpa"
    m = BertForSequenceClassification(cfg)
    if pretrain is not None:
        sizes = sorted(set(pretrain) & set(MLM_SIZES)) if isinstance(pretrain, dict) else None
        if sizes is None or sizes:
            raise KdxError(f"model 'bert': pretrain must be a mapping of masked-LM settings without sizes (the model's "
                           f"own layers, hidden, heads, intermediate are used), got {pretrain!r}")
        load_pretrained_encoder(m.bert, data, {"layers": layers, "hidden": hidden, "heads": heads,
                                               "intermediate": intermediate, "corpus": "unlabeled", **pretrain})
    return TokenClassifier(_BertBody(m.bert), hidden, data.num_classes, data.pad_id, nn.Sequential(m.dropout, m.classifier))


def load_pretrained_encoder(encoder: nn.Module, data: Dataset, settings: dict) -> None:
    """Copy the cached masked LM's encoder (trained now if missing) into a classifier's BertModel. The MLM's
    position and token-type tables may be longer than the classifier's (kdx.models.mlm.build_mlm's sizes):
    their first rows are the ones the classifier uses. The classifier's pooler is not in an MLM: it starts at random."""
    mlm = get_mlm(data, settings, resolve_device("auto"))  # get_mlm checks the settings (mlm_settings)
    source = mlm.bert.state_dict()
    target = encoder.state_dict()
    for key, value in target.items():
        if key.startswith("pooler."):
            continue
        if key not in source:
            raise KdxError(f"model 'bert' pretrain: the masked LM has no {key}; its settings must match the model's sizes")
        w = source[key]
        if w.dim() == 2 and w.shape[0] > value.shape[0] and w.shape[1:] == value.shape[1:]:
            w = w[: value.shape[0]]
        target[key] = w.to(value.dtype)
    encoder.load_state_dict(target)


class _BagBody(nn.Module):
    def __init__(self, vocab: int, dim: int, hidden: list[int], pad_id: int, dropout: float):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=pad_id)
        layers, d = [], dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d = h
        self.mlp = nn.Sequential(*layers)

    def forward(self, ids, mask):
        m = mask.unsqueeze(-1).to(self.emb.weight.dtype)
        mean = (self.emb(ids) * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.mlp(mean)

    def input_embeddings(self):
        return self.emb


@MODELS.register(context=("data",))
def bag_of_embeddings(data: Dataset, dim: int = 64, hidden: list[int] = [128], dropout: float = 0.0) -> TokenClassifier:
    """Mean of token embeddings (padding masked out) then an MLP: the fastest text student."""
    _need_text(data, "bag_of_embeddings")
    body = _BagBody(data.vocab_size, dim, hidden, data.pad_id, dropout)
    return TokenClassifier(body, hidden[-1] if hidden else dim, data.num_classes, data.pad_id)


class _CnnBody(nn.Module):
    def __init__(self, vocab: int, dim: int, channels: int, kernels: list[int], pad_id: int, dropout: float):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, k, padding=k // 2) for k in kernels)
        self.drop = nn.Dropout(dropout)

    def forward(self, ids, mask):
        e = self.emb(ids).transpose(1, 2)  # (N, D, L)
        neg = torch.finfo(e.dtype).min
        outs = []
        for conv in self.convs:
            h = torch.relu(conv(e))[..., :ids.shape[1]]
            outs.append(h.masked_fill(~mask.unsqueeze(1), neg).amax(-1))  # max over the real tokens
        return self.drop(torch.cat(outs, 1))

    def input_embeddings(self):
        return self.emb


@MODELS.register(context=("data",))
def text_cnn(data: Dataset, dim: int = 64, channels: int = 128, kernels: list[int] = [3, 5], dropout: float = 0.0) -> TokenClassifier:
    """Kim-style 1-D CNN over token embeddings: convolutions of several widths, max over time."""
    _need_text(data, "text_cnn")
    body = _CnnBody(data.vocab_size, dim, channels, kernels, data.pad_id, dropout)
    return TokenClassifier(body, channels * len(kernels), data.num_classes, data.pad_id)
