"""Template: a stack of cells with torch.nn.LSTM's calling convention (appended after ``Cell``)."""

from typing import Optional

import torch
from torch import Tensor, nn

# --- exported ---


class Layer(nn.Module):
    """num_layers cells stacked, with torch.nn.LSTM's calling convention.

        output, (h_n, c_n) = layer(input, (h_0, c_0))
        input [T, B, E] ([B, T, E] if batch_first; [T, E] unbatched); h_0, c_0 [num_layers, B, H]
        ([num_layers, H] unbatched), zeros when omitted; output [T, B, H] = h_t of the last layer.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first = batch_first
        self.cells = nn.ModuleList(
            Cell(input_size if layer == 0 else hidden_size, hidden_size) for layer in range(num_layers)  # noqa: F821
        )

    def forward(
        self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)  # [T, E] -> [T, 1, E]
        if batched and self.batch_first:
            x = x.transpose(0, 1)  # [B, T, E] -> [T, B, E]
        T, B = x.shape[0], x.shape[1]
        if hx is None:
            h0 = x.new_zeros(self.num_layers, B, self.hidden_size)
            c0 = h0
        else:
            h0, c0 = hx
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)  # [L, H] -> [L, 1, H]
        h_n, c_n = [], []
        for layer, cell in enumerate(self.cells):
            h, c = cell.guard_state(h0[layer], c0[layer])
            xp = cell.project_input(x)  # hoisted out of the time loop
            w = cell.step_weights()
            outs = []
            for t in range(T):  # a Python loop: torch.export unrolls it at the example's length
                h, c = cell.step(xp[t], h, c, w)
                outs.append(h)
            x = torch.stack(outs) if outs else x.new_empty(0, B, self.hidden_size)  # [T, B, H]
            h_n.append(h)
            c_n.append(c)
        out = x
        if batched and self.batch_first:
            out = out.transpose(0, 1)  # [T, B, H] -> [B, T, H]
        h_out, c_out = torch.stack(h_n), torch.stack(c_n)  # [L, B, H]
        if not batched:
            out, h_out, c_out = out.squeeze(1), h_out.squeeze(1), c_out.squeeze(1)
        return out, (h_out, c_out)
