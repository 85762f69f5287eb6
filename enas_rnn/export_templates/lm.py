"""Template: the whole language model (appended after ``Layer`` when the whole model is exported)."""

from typing import Optional

from torch import Tensor, nn

# --- exported ---


class LM(nn.Module):
    """The whole language model: tokens [T, B] -> embedding -> Layer -> decoder -> logits [T, B, V]."""

    def __init__(self, vocab_size: int, emb_size: int, hidden_size: int, num_layers: int = 1,
                 tie_weights: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_size)
        self.layer = Layer(emb_size, hidden_size, num_layers)  # noqa: F821
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if tie_weights:  # Press & Wolf 2017: the output embedding is the input embedding
            self.decoder.weight = self.embedding.weight

    def forward(
        self, tokens: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, hx = self.layer(self.embedding(tokens), hx)
        return self.decoder(out), hx
