"""The sparse autoencoder: ReLU (L1-penalised) or TopK latents, unit-norm decoder columns.

.. code-block:: text

    z     = act((x - b_dec) W_enc^T + b_enc)       act: ReLU, or ReLU of the top k
    x_hat = z W_dec^T + b_dec                        ||W_dec[:, i]|| = 1 for every latent i

Parameter names (what the optimizer's name-based groups see): ``encoder.weight``
``[d_sae, d_in]``, ``encoder.bias`` ``[d_sae]``, ``decoder.weight`` ``[d_in, d_sae]``,
``decoder.bias`` ``[d_in]`` (the pre-encoder bias is the decoder bias, as is common).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SparseAutoencoder"]


class SparseAutoencoder(nn.Module):
    def __init__(self, d_in: int, d_sae: int, kind: str = "l1", k: int = 8,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if kind not in ("l1", "topk"):
            raise ValueError(f"unknown SAE kind {kind!r}; expected 'l1' or 'topk'")
        if kind == "topk" and not 1 <= k <= d_sae:
            raise ValueError(f"k={k} must be in [1, d_sae={d_sae}]")
        self.d_in, self.d_sae, self.kind, self.k = d_in, d_sae, kind, k
        self.encoder = nn.Linear(d_in, d_sae)
        self.decoder = nn.Linear(d_sae, d_in)
        with torch.no_grad():
            w = torch.randn(d_in, d_sae, generator=generator)
            self.decoder.weight.copy_(w / w.norm(dim=0, keepdim=True))
            # Tied init (encoder = decoder^T), scaled so that with ~half the latents active the
            # initial reconstruction has about the input's size: sum_i d_i d_i^T ~ (d_sae / d_in) I.
            self.encoder.weight.copy_(self.decoder.weight.t() * min(1.0, 2.0 * d_in / d_sae))
            self.encoder.bias.zero_()
            self.decoder.bias.zero_()

    @torch.no_grad()
    def init_bias(self, mean: Tensor) -> None:
        """Pre-encoder / decoder bias at the data mean (common practice)."""
        self.decoder.bias.copy_(mean)

    def pre_acts(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x - self.decoder.bias, self.encoder.weight, self.encoder.bias)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        if self.kind == "l1":
            return torch.relu(pre)
        values, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(values))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_hat, z)``."""
        z = self.encode(x)
        return self.decode(z), z

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Renormalise every decoder column to unit norm."""
        w = self.decoder.weight
        w.div_(w.norm(dim=0, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove the gradient component parallel to each (unit) decoder column: the step
        then moves along the sphere to first order."""
        w, g = self.decoder.weight, self.decoder.weight.grad
        if g is not None:
            g.sub_(w * (w * g).sum(dim=0, keepdim=True))
