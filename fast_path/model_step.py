"""`ModelStep`: what the constrained beam search needs from a causal LM, and two adapters.

The decoder only ever asks two things of a model:

- `prefill(input_ids (B, T), attention_mask (B, T)) -> (last_logits (B, V), cache)`: run the
  shared context once per request — B rows, not B × beams (FlashRec);
- `step(tokens (B',), cache, parent_index (B',)) -> (logits (B', V), cache)`: row i of the new
  step continues row `parent_index[i]` of the previous cache (at the first step: request
  `parent_index[i]` of the prefill), so beams are expanded, reordered and retired by one index.

Adapters:

- `HFModelStep` wraps any transformers causal LM with its own `DynamicCache`: left padding is
  handled by the attention mask plus position ids (`cumsum(mask) - 1`, as `generate` does),
  and the cache rows are `index_select`-ed by `parent_index` at every step.
- `SharedPrefixStep` (Llama / Qwen2 layouts) keeps the context's keys/values once per request
  and only the few generated tokens per beam; at each step the beams of a request attend to
  their shared context with one batched matmul per layer instead of copying the context cache
  B×beams times. Its prefill is packed (no compute on left padding) and runs the last layer's
  attention output and MLP on each row's last token only (the cache needs just its K/V).
  It re-implements the decoder block with the model's own modules and weights, so it follows
  transformers to float rounding (tests compare both adapters with `generate`).

Both return float32 logits of the full vocabulary; the caller owns the softmax.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import torch
from torch import nn

from sid_index.errors import ConfigError, DataError

CacheT = TypeVar("CacheT")


class ModelStep(Protocol[CacheT]):
    """A causal LM seen as prefill + one-token steps over beams (see the module docstring)."""

    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, CacheT]:
        """(B, T) left-padded ids and 0/1 mask → (B, V) float32 logits of the next token."""
        ...

    def step(
        self, tokens: torch.Tensor, cache: CacheT, parent_index: torch.Tensor
    ) -> tuple[torch.Tensor, CacheT]:
        """(B',) next tokens, each continuing cache row `parent_index` (B',) → (B', V) logits.

        The cache passed in is consumed (adapters may reuse its storage)."""
        ...


def _check_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise DataError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask "
            f"{tuple(attention_mask.shape)} must both be (batch, length)"
        )
    if input_ids.shape[0] == 0:
        raise DataError("empty batch: no prompt rows to decode")
    if input_ids.shape[1] == 0 or bool((attention_mask.sum(dim=1) == 0).any()):
        raise DataError("every prompt row needs at least one attended token")


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids of a left-padded batch, exactly as transformers' generate makes them."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


class _HFForward:
    """Calls a transformers causal LM across the 4.x (`past_key_values`) / 5.x (`cache`) API."""

    def __init__(self, model: nn.Module) -> None:
        params = inspect.signature(model.forward).parameters
        self.model = model.eval()
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.keep_kw = next(
            (k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None
        )

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any | None,
    ) -> tuple[torch.Tensor, Any]:
        kwargs: dict[str, Any] = {self.cache_kw: cache}
        if self.keep_kw is not None:
            kwargs[self.keep_kw] = 1  # only the last position's logits are ever used
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **kwargs,
        )
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        return out.logits[:, -1, :].float(), new_cache


@dataclass(slots=True)
class HFCache:
    """Decoder state of `HFModelStep`: the transformers cache plus the running mask/positions."""

    kv: Any
    """A transformers `Cache` (DynamicCache), one row per live beam."""
    attention_mask: torch.Tensor
    """(B', T + t) int64 attention mask of each row (prompt padding + generated tokens)."""
    next_position: torch.Tensor
    """(B',) int64 position id of each row's next token."""


class HFModelStep:
    """`ModelStep` over any transformers causal LM using its own KV cache (reference adapter)."""

    def __init__(self, model: nn.Module) -> None:
        self._forward = _HFForward(model)

    @torch.inference_mode()
    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, HFCache]:
        _check_prompt(input_ids, attention_mask)
        mask = attention_mask.long()
        pos = _positions(mask)
        logits, kv = self._forward(input_ids.long(), mask, pos, None)
        return logits, HFCache(kv, mask, pos[:, -1] + 1)

    @torch.inference_mode()
    def step(
        self, tokens: torch.Tensor, cache: HFCache, parent_index: torch.Tensor
    ) -> tuple[torch.Tensor, HFCache]:
        parent_index = parent_index.long()
        cache.kv.reorder_cache(parent_index)  # index_select of every layer's rows
        mask = cache.attention_mask.index_select(0, parent_index)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = cache.next_position.index_select(0, parent_index)
        logits, kv = self._forward(tokens.long()[:, None], mask, pos[:, None], cache.kv)
        return logits, HFCache(kv, mask, pos + 1)


# ---- shared-prefix adapter -------------------------------------------------------------------

_SHARED_PREFIX_TYPES = ("llama", "qwen2")


@dataclass(slots=True)
class SharedPrefixCache:
    """Decoder state of `SharedPrefixStep`: context K/V once per request, beams' own K/V apart."""

    ctx_keys: list[torch.Tensor]
    """Per layer (R, Hkv, T, hd) keys of the prompt, one row per request."""
    ctx_values: list[torch.Tensor]
    """Per layer (R, Hkv, T, hd) values of the prompt."""
    ctx_bias: torch.Tensor
    """(R, 1, 1, 1, T) float additive mask: 0 on prompt tokens, dtype-min on left padding."""
    next_position: torch.Tensor
    """(R,) int64 position id of each request's first generated token."""
    request: torch.Tensor
    """(B',) int64 request of each live row."""
    beam_keys: list[torch.Tensor]
    """Per layer (B', Hkv, t, hd) keys of the t tokens generated so far on each row."""
    beam_values: list[torch.Tensor]
    """Per layer (B', Hkv, t, hd) values of the generated tokens."""


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _unpack(x: torch.Tensor, real: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """(N, heads, hd) packed real tokens → (B, heads, T, hd) with zeros on padding."""
    out = x.new_zeros(batch * length, *x.shape[1:])
    out[real] = x
    return out.view(batch, length, *x.shape[1:]).transpose(1, 2)


class SharedPrefixStep:
    """`ModelStep` for Llama / Qwen2 causal LMs that never copies the context per beam.

    Prefill and steps re-implement the decoder block with the model's own modules (norms,
    projections, rotary table, MLP, head); a step splits attention into (shared context,
    per-beam generated tokens) under one softmax."""

    def __init__(self, model: nn.Module) -> None:
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type not in _SHARED_PREFIX_TYPES:
            raise ConfigError(
                f"SharedPrefixStep supports {_SHARED_PREFIX_TYPES}, not {model_type=}; "
                "use HFModelStep for other architectures"
            )
        if getattr(config, "use_sliding_window", False):
            raise ConfigError("SharedPrefixStep does not implement sliding-window attention")
        model.eval()
        # Llama / Qwen2 layout: model.model.{embed_tokens, rotary_emb, layers, norm}, lm_head.
        self.base: Any = cast(Any, model.model)
        self.lm_head: Any = cast(Any, model.lm_head)
        attn = self.base.layers[0].self_attn
        self.head_dim: int = attn.head_dim
        self.groups: int = attn.num_key_value_groups
        self.kv_heads: int = attn.k_proj.out_features // attn.head_dim
        self.scaling: float = attn.scaling

    @torch.inference_mode()
    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, SharedPrefixCache]:
        _check_prompt(input_ids, attention_mask)
        batch, length = input_ids.shape
        mask = attention_mask.bool()
        pos = _positions(attention_mask)  # (B, T)
        # Packed: norms, projections and MLPs run on the real tokens only, never on padding.
        real = torch.nonzero(mask.flatten()).flatten()  # (N,) into B·T
        last = torch.arange(1, batch + 1) * length - 1  # left padding: row ends are real
        last_packed = torch.searchsorted(real, last)  # (B,) rows of `real`
        h = self.base.embed_tokens(input_ids.flatten()[real].long())[None]  # (1, N, d)
        cos, sin = self.base.rotary_emb(h, pos.flatten()[real][None])  # (1, N, hd)
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # (N, 1, hd)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        # A key is visible when it is real and not in the future; a padding query sees itself
        # only, so no softmax row is empty (its output is discarded).
        allowed = (causal & mask[:, None, :]) | torch.eye(length, dtype=torch.bool)
        allowed = allowed[:, None]  # (B, 1, T, T)
        dtype = h.dtype
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        num_layers = len(self.base.layers)
        for i, layer in enumerate(self.base.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)[0]  # (N, d)
            k = attn.k_proj(x).view(-1, self.kv_heads, self.head_dim)
            v = attn.v_proj(x).view(-1, self.kv_heads, self.head_dim)
            k = k * cos + _rotate_half(k) * sin  # (N, Hkv, hd)
            k_pad = _unpack(k, real, batch, length)  # (B, Hkv, T, hd)
            v_pad = _unpack(v, real, batch, length)
            keys.append(k_pad)
            values.append(v_pad)
            if i == num_layers - 1:
                # The context's keys/values are all the cache needs from the last layer: the
                # rest of it only runs on each row's last token, which yields the logits.
                h, x, cos, sin = (
                    h[:, last_packed],
                    x[last_packed],
                    cos[last_packed],
                    sin[last_packed],
                )
            q = attn.q_proj(x).view(-1, self.kv_heads * self.groups, self.head_dim)
            q = q * cos + _rotate_half(q) * sin  # (N or B, H, hd)
            k_rep = k_pad.repeat_interleave(self.groups, dim=1)  # (B, H, T, hd)
            v_rep = v_pad.repeat_interleave(self.groups, dim=1)
            if i == num_layers - 1:
                o = torch.nn.functional.scaled_dot_product_attention(
                    q[:, :, None], k_rep, v_rep, attn_mask=allowed[:, :, -1:], scale=self.scaling
                )[:, :, 0]  # (B, H, hd)
            else:
                q_pad = _unpack(q, real, batch, length)  # (B, H, T, hd)
                o = torch.nn.functional.scaled_dot_product_attention(
                    q_pad, k_rep, v_rep, attn_mask=allowed, scale=self.scaling
                )  # (B, H, T, hd)
                o = o.transpose(1, 2).reshape(batch * length, -1)[real]  # (N, H·hd)
            h = h + attn.o_proj(o.reshape(1, o.shape[0], -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = self.lm_head(self.base.norm(h))[0].float()  # (B, V)
        bias = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
        empty = keys[0][:, :, :0]  # (R, Hkv, 0, hd)
        cache = SharedPrefixCache(
            ctx_keys=keys,
            ctx_values=values,
            ctx_bias=bias[:, None, None, None, :],
            next_position=pos[:, -1] + 1,
            request=torch.arange(batch),
            beam_keys=[empty] * num_layers,
            beam_values=[empty] * num_layers,
        )
        return logits, cache

    @torch.inference_mode()
    def step(
        self, tokens: torch.Tensor, cache: SharedPrefixCache, parent_index: torch.Tensor
    ) -> tuple[torch.Tensor, SharedPrefixCache]:
        parent_index = parent_index.long()
        request = cache.request.index_select(0, parent_index)  # (B',)
        rows = request.shape[0]
        num_requests = cache.next_position.shape[0]
        generated = cache.beam_keys[0].shape[2]
        pos = cache.next_position.index_select(0, request) + generated  # (B',)

        # Slot of each row among its request's rows: the context attention runs on a padded
        # (R, M) layout so the beams of a request share one matmul against its context.
        counts = torch.bincount(request, minlength=num_requests)
        width = int(counts.max())
        order = torch.argsort(request, stable=True)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(request)
        slot[order] = torch.arange(rows) - first[request[order]]
        padded_row = request * width + slot  # (B',) into R × M

        h = self.base.embed_tokens(tokens.long())[:, None, :]  # (B', 1, d)
        cos, sin = self.base.rotary_emb(h, pos[:, None])  # (B', 1, hd)
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
        new_keys: list[torch.Tensor] = []
        new_values: list[torch.Tensor] = []
        for i, layer in enumerate(self.base.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(rows, 1, -1, self.head_dim)  # (B', 1, H, hd)
            k = attn.k_proj(x).view(rows, 1, -1, self.head_dim)  # (B', 1, Hkv, hd)
            v = attn.v_proj(x).view(rows, 1, -1, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys = torch.cat(
                [cache.beam_keys[i].index_select(0, parent_index), k.transpose(1, 2)], 2
            )
            values = torch.cat(
                [cache.beam_values[i].index_select(0, parent_index), v.transpose(1, 2)], 2
            )  # (B', Hkv, t+1, hd)
            new_keys.append(keys)
            new_values.append(values)
            out = self._attend(q, keys, values, cache, i, padded_row, width)  # (B', H*hd)
            h = h + attn.o_proj(out[:, None, :])
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = self.lm_head(self.base.norm(h))[:, -1, :].float()  # (B', V)
        return logits, SharedPrefixCache(
            ctx_keys=cache.ctx_keys,
            ctx_values=cache.ctx_values,
            ctx_bias=cache.ctx_bias,
            next_position=cache.next_position,
            request=request,
            beam_keys=new_keys,
            beam_values=new_values,
        )

    def _attend(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        cache: SharedPrefixCache,
        layer: int,
        padded_row: torch.Tensor,
        width: int,
    ) -> torch.Tensor:
        """Attention of (B', 1, H, hd) queries over (shared context ‖ own generated tokens)."""
        rows = q.shape[0]
        ctx_k, ctx_v = cache.ctx_keys[layer], cache.ctx_values[layer]  # (R, Hkv, T, hd)
        num_requests, kv_heads, ctx_len, hd = ctx_k.shape
        qg = q.view(rows, kv_heads, self.groups, hd)  # (B', Hkv, G, hd)
        # Context scores on the padded layout: (R, Hkv, M·G, hd) @ (R, Hkv, hd, T).
        q_pad = q.new_zeros(num_requests * width, kv_heads, self.groups, hd)
        q_pad[padded_row] = qg
        q_pad = q_pad.view(num_requests, width, kv_heads, self.groups, hd).transpose(1, 2)
        s_ctx = torch.matmul(
            q_pad.reshape(num_requests, kv_heads, width * self.groups, hd), ctx_k.transpose(2, 3)
        ).view(num_requests, kv_heads, width, self.groups, ctx_len)
        s_ctx = (s_ctx * self.scaling + cache.ctx_bias).transpose(1, 2)
        s_ctx = s_ctx.reshape(num_requests * width, kv_heads, self.groups, ctx_len)[padded_row]
        s_own = torch.matmul(qg, keys.transpose(2, 3)) * self.scaling  # (B', Hkv, G, t+1)
        probs = torch.softmax(torch.cat([s_ctx, s_own], dim=-1), dim=-1, dtype=torch.float32)
        probs = probs.to(q.dtype)
        p_ctx, p_own = probs[..., :ctx_len], probs[..., ctx_len:]
        p_pad = q.new_zeros(num_requests * width, kv_heads, self.groups, ctx_len)
        p_pad[padded_row] = p_ctx
        p_pad = p_pad.view(num_requests, width, kv_heads, self.groups, ctx_len).transpose(1, 2)
        o_ctx = torch.matmul(
            p_pad.reshape(num_requests, kv_heads, width * self.groups, ctx_len), ctx_v
        ).view(num_requests, kv_heads, width, self.groups, hd)
        o_ctx = o_ctx.transpose(1, 2).reshape(num_requests * width, kv_heads, self.groups, hd)
        out = o_ctx[padded_row] + torch.matmul(p_own, values)  # (B', Hkv, G, hd)
        return out.reshape(rows, kv_heads * self.groups * hd)
