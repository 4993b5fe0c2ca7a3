"""IP-Adapter's image branch of a cross-attention layer (Ye et al. 2023, "decoupled cross-attention").

An IP-Adapter adds, to every cross-attention of a UNet, a second key/value projection
(``to_k_ip`` / ``to_v_ip``) that reads *image tokens* instead of text. The layer's queries attend
to the text and to the image tokens separately; the image result, times the adapter's ``scale``,
is added to the text result before the shared output projection ``to_out.0``.

The image tokens travel with the text context: the UNet appends them to it along the token axis
(``[N, L_text + T_1 + … + T_k, D]``, one group per loaded adapter) and tells every branch the group
sizes through :meth:`IPAdapterBranch.set_token_counts` for the length of its forward pass. A
branch without token counts splits nothing, so the layer then attends to its context as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class IPAdapterBranch(nn.Module):
    """``to_k_ip`` / ``to_v_ip`` of one cross-attention layer, one pair per loaded IP-Adapter.

    ``context_dim`` is the width of the image tokens (the UNet's ``cross_attention_dim``);
    ``inner_dim`` that of the layer's keys (``heads × dim_head``). ``scales`` weigh each adapter's
    attention output (1.0 each; :meth:`set_scales` changes them; 0 skips an adapter exactly).
    """

    def __init__(self, context_dim: int, inner_dim: int, num_adapters: int = 1) -> None:
        super().__init__()
        if num_adapters < 1:
            raise ValueError(f"num_adapters must be ≥ 1, got {num_adapters}")
        self.to_k_ip = nn.ModuleList([nn.Linear(context_dim, inner_dim, bias=False) for _ in range(num_adapters)])
        self.to_v_ip = nn.ModuleList([nn.Linear(context_dim, inner_dim, bias=False) for _ in range(num_adapters)])
        self.scales: tuple[float, ...] = (1.0,) * num_adapters
        # Image tokens per adapter at the end of the context; () while no image tokens are attached.
        self.token_counts: tuple[int, ...] = ()

    @property
    def num_adapters(self) -> int:
        return len(self.to_k_ip)

    def set_scales(self, scales: Sequence[float]) -> None:
        """One weight per adapter (the ``scale`` of diffusers' ``set_ip_adapter_scale``)."""
        if len(scales) != self.num_adapters:
            raise ValueError(f"expected {self.num_adapters} IP-Adapter scale(s), got {len(scales)}: {list(scales)}")
        self.scales = tuple(float(scale) for scale in scales)

    def set_token_counts(self, counts: Sequence[int]) -> None:
        """How many image tokens each adapter appended to the context (``()``: none attached)."""
        if counts and len(counts) != self.num_adapters:
            raise ValueError(f"expected image tokens for {self.num_adapters} IP-Adapter(s), got {len(counts)} group(s)")
        self.token_counts = tuple(int(count) for count in counts)

    @property
    def attached(self) -> bool:
        """Whether the context currently carries image tokens for this branch."""
        return bool(self.token_counts)

    def split(self, context: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``[N, L_text + ΣT, D]`` → the text part ``[N, L_text, D]`` and one ``[N, T_i, D]`` per adapter."""
        total = sum(self.token_counts)
        if context.shape[1] <= total:
            raise ValueError(
                f"the context has {context.shape[1]} tokens, not more than the {total} image tokens it should end with"
            )
        text_length = context.shape[1] - total
        groups = list(context[:, text_length:].split(list(self.token_counts), dim=1))
        return context[:, :text_length], groups
