"""Numba kernels of the forward pass: RMS norm, RoPE, masked soft-capped softmax, activations.

Each follows ggml-cpu's float32 code so that our logits track llama.cpp's:
- ``rms_norm``: ``ggml_compute_forward_rms_norm_f32`` (sum of squares in double, ``1/sqrtf(mean+eps)``
  in float), then the weight multiply (``ggml_mul``).
- ``rope_cache`` / ``rope_``: ``ggml_rope_cache_init`` + ``rope_yarn`` (theta advanced by repeated float
  multiplication, freq factors divide theta) and ``rotate_pairs`` (NORM: pairs (2i, 2i+1); NEOX:
  (i, i + n_rot/2)); dimensions past ``n_rot`` pass through.
- ``softmax_rows_``: ``ggml_compute_forward_soft_max_f32`` preceded by the attention soft-cap
  (``cap * tanh(kq / cap)``, llama-graph.cpp ``build_attn_mha``), with the causal and sliding-window
  mask (``llama_hparams::is_masked_swa``, standard: masked when ``p1 - p0 >= n_swa``).
The matmuls themselves are numpy float32 GEMMs (BLAS), not here.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

_F = np.float32


@njit(cache=True, nogil=True)
def rms_norm(x, w, eps):
    """y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w for each row of a 2-D float32 array."""
    n, d = x.shape
    out = np.empty((n, d), np.float32)
    for r in range(n):
        s = 0.0
        for i in range(d):
            v = np.float64(x[r, i])
            s += v * v
        mean = np.float32(s / d)
        scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
        for i in range(d):
            out[r, i] = (x[r, i] * scale) * w[i]
    return out


@njit(cache=True, nogil=True)
def rope_cache(n_pos, n_rot, freq_base, freq_scale, freq_factors, ext_factor, attn_factor,
               corr0, corr1):
    """(n_pos, n_rot) float32: for position p and pair i, cos at [p, 2i] and sin at [p, 2i+1]
    (positions 0..n_pos-1). ``freq_factors`` (n_rot/2 floats, or empty) divide theta."""
    out = np.empty((n_pos, n_rot), np.float32)
    theta_scale = np.float32(np.float32(freq_base) ** np.float32(-2.0 / n_rot))
    fs = np.float32(freq_scale)
    have_ff = freq_factors.shape[0] > 0
    for p in range(n_pos):
        theta = np.float32(p)
        for i0 in range(0, n_rot, 2):
            ff = freq_factors[i0 // 2] if have_ff else np.float32(1.0)
            theta_extrap = np.float32(theta / ff)
            theta_interp = np.float32(fs * theta_extrap)
            th = theta_interp
            mscale = np.float32(attn_factor)
            if ext_factor != 0.0:
                y = (i0 // 2 - corr0) / max(0.001, corr1 - corr0)
                ramp = 1.0 - min(1.0, max(0.0, y))
                mix = np.float32(ramp * ext_factor)
                th = np.float32(theta_interp * (np.float32(1.0) - mix) + theta_extrap * mix)
                mscale = np.float32(mscale * (np.float32(1.0) + np.float32(0.1) * np.float32(math.log(1.0 / fs))))
            out[p, i0] = np.float32(math.cos(th)) * mscale
            out[p, i0 + 1] = np.float32(math.sin(th)) * mscale
            theta = np.float32(theta * theta_scale)
    return out


def yarn_corr_dims(n_rot: int, n_ctx_orig: int, freq_base: float, beta_fast: float,
                   beta_slow: float) -> tuple[float, float]:
    """``ggml_rope_yarn_corr_dims``."""
    def dim(beta: float) -> float:
        return n_rot * math.log(n_ctx_orig / (beta * 2 * math.pi)) / (2 * math.log(freq_base))
    return max(0.0, math.floor(dim(beta_fast))), min(n_rot - 1.0, math.ceil(dim(beta_slow)))


@njit(cache=True, nogil=True)
def rope_(x, pos, cache, n_rot, neox):
    """Rotate, in place, the first ``n_rot`` dims of every head of x (n_tok, n_head, head_dim);
    token t is at position ``pos[t]`` (a row of ``cache``)."""
    n_tok, n_head, _ = x.shape
    half = n_rot // 2
    for t in range(n_tok):
        c = cache[pos[t]]
        for h in range(n_head):
            for i in range(half):
                cs = c[2 * i]
                sn = c[2 * i + 1]
                if neox:
                    a = i
                    b = i + half
                else:
                    a = 2 * i
                    b = 2 * i + 1
                x0 = x[t, h, a]
                x1 = x[t, h, b]
                x[t, h, a] = x0 * cs - x1 * sn
                x[t, h, b] = x0 * sn + x1 * cs


@njit(cache=True, nogil=True)
def softmax_rows_(s, n_q, q0, k0, scale, softcap, n_swa):
    """In place over the (g * n_q, n_k) scores of one block of queries of one sequence and one KV
    head (g query heads stacked): row r is the query at position q0 + r % n_q, column c the key at
    position k0 + c. Soft-cap, scale, causal + sliding-window mask, softmax; masked entries become 0."""
    rows, n_k = s.shape
    for r in range(rows):
        i = q0 + r % n_q
        lo = 0
        if n_swa > 0 and i - n_swa + 1 > 0:
            lo = i - n_swa + 1
        a = lo - k0
        e_ = i + 1 - k0
        row = s[r]
        mx = np.float32(-np.inf)            # float32 throughout: expf, not exp
        for c in range(a, e_):
            v = row[c]
            if softcap > 0.0:
                v = softcap * np.float32(math.tanh(v / softcap))
            v = v * scale
            row[c] = v
            if v > mx:
                mx = v
        tot = 0.0
        for c in range(a, e_):
            e = np.float32(math.exp(row[c] - mx))
            row[c] = e
            tot += e
        inv = np.float32(1.0 / tot)
        for c in range(0, a):
            row[c] = 0.0
        for c in range(a, e_):
            row[c] *= inv
        for c in range(e_, n_k):
            row[c] = 0.0


@njit(cache=True, nogil=True)
def silu_mul(g, u):
    """silu(g) * u elementwise (2-D float32), ``ggml_vec_swiglu_f32``."""
    out = np.empty_like(g)
    n, d = g.shape
    for r in range(n):
        for i in range(d):
            x = g[r, i]
            out[r, i] = x / (np.float32(1.0) + np.float32(math.exp(-x))) * u[r, i]
    return out


@njit(cache=True, nogil=True)
def gelu_mul(g, u):
    """gelu_tanh(g) * u elementwise (2-D float32). ggml-cpu evaluates GELU through an fp16 table
    (``GGML_GELU_FP16``); this is the exact float32 formula it tabulates."""
    out = np.empty_like(g)
    n, d = g.shape
    c = np.float32(0.79788456080286535587989211986876)
    a = np.float32(0.044715)
    for r in range(n):
        for i in range(d):
            x = g[r, i]
            y = np.float32(0.5) * x * (np.float32(1.0) + np.float32(math.tanh(c * x * (np.float32(1.0) + a * x * x))))
            out[r, i] = y * u[r, i]
    return out


@njit(cache=True, nogil=True)
def softcap_(x, cap):
    """x = cap * tanh(x / cap), in place (2-D float32): final-logit soft-capping."""
    n, d = x.shape
    c = np.float32(cap)
    for r in range(n):
        for i in range(d):
            x[r, i] = c * np.float32(math.tanh(x[r, i] / c))
