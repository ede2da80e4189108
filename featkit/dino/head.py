"""DINO's projection head: an MLP, an L2-normalised bottleneck, and K prototypes.

The last layer is weight-normalised (``W = g * V / ||V||`` row-wise) with ``g`` fixed at
1 by default (DINO's ``norm_last_layer=True``), so the logits are cosines between the
normalised bottleneck feature and each prototype; DINO found this keeps training
stable. Only the backbone is kept after training; the head is thrown away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOHead(nn.Module):
    """``in_dim`` → MLP (``n_layers`` linear layers, GELU) → ``bottleneck_dim`` → K logits.

    Args:
        in_dim: backbone feature size.
        out_dim: K, the number of prototypes.
        hidden_dim: width of the hidden MLP layers (DINO: 2048).
        bottleneck_dim: size of the normalised feature the prototypes score (DINO: 256).
        n_layers: number of linear layers before the prototypes (DINO: 3).
        norm_last_layer: fix the prototypes' norm ``g`` to 1 (True) or learn it.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        n_layers = max(n_layers, 1)
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        # Weight norm written out: direction V and magnitude g, W = g * V / ||V||.
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        self.prototype_norm = nn.Parameter(torch.ones(out_dim, 1))
        self.prototype_norm.requires_grad_(not norm_last_layer)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The prototypes, whose gradients DINO cancels during the first epoch(s)."""
        return [self.prototypes, self.prototype_norm]

    def forward(self, x: Tensor) -> Tensor:
        """[N, in_dim] -> [N, K] logits (cosines scaled by ``g``)."""
        z = F.normalize(self.mlp(x), dim=-1, p=2)
        w = self.prototype_norm * F.normalize(self.prototypes, dim=-1, p=2)
        return z @ w.t()
