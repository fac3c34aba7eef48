// Fused decoupled cross-attention (Control-CLIP, DESIGN.md §2):
//
//   out[b, i, h*DH + d] = w[b,0] * Σ_j softmax_j(scale·q_i·kc_j) vc_j[d]
//                       + w[b,1] * Σ_j softmax_j(scale·q_i·ks_j) vs_j[d]
//
// q [B, Lq, H*DH]; kc, vc [B, Lc, H*DH]; ks, vs [B, Ls, H*DH]; w [B, 2]; out [B, Lq, H*DH];
// row-major, contiguous; w f32, the others all f32 or (the f16 variant, `enable f16`) all f16, which
// the kernel widens to f32 as it reads them: scores, softmax and accumulators are f32 in both, and the
// output is rounded once, as it is written. scale = 1/sqrt(DH), passed in from the host.
//
// One workgroup of 128 invocations per (b, h, tile of TQ queries). The workgroup reads its Q tile once
// (pre-scaled, into workgroup memory), then for each context in turn:
//   - scores a chunk of at most KT = 80 keys for the TQ queries: each invocation a register tile of
//     MQ queries × MK keys (8 × 16 invocations cover TQ × KT), into workgroup memory;
//   - folds the chunk into each row's max and Σexp (numerically stable softmax), PARTS invocations
//     per row;
//   - turns the scores into probabilities already multiplied by w / Σexp, so that both contexts add
//     into one set of accumulators;
//   - accumulates probabilities · V: each invocation a register tile of MQ2 queries × one vector of
//     d, NT tiles per invocation.
// With at most KT keys (77-token contexts) each key is scored once; longer contexts (any length ≥ 1
// works) take a second pass over the chunks that recomputes the scores. The output is written once,
// at the end. A context whose weight is exactly 0 (the unconditional half of a classifier-free-
// guidance batch uses (1, 0)) is skipped.
//
// Vectors: V is vec4<f32> when DH is a multiple of 4 (all SD head dims), f32 otherwise; S, the stored
// element, is V or its f16 form; DV = DH / 4 or DH; the host passes the row stride in V units.
//
// Dispatch: a 2-D grid of workgroups, linearised as wid.y * num_workgroups.x + wid.x, so that more
// than 65535 workgroups fit WebGPU's per-dimension limit; workgroups past `total` return at once.
//
// Template constants (burn's SourceTemplate, filled by src/kernels/decoupled_attention.rs, which
// keeps workgroup memory — TQ*DH + TQ*KT + 2*PARTS*TQ + 2 floats — within WebGPU's 16 KiB default).
//
// Conventions (burn 0.22.1 template kernels): entry point `main`; bindings in argument order; every
// storage binding read_write (burn's tensors may share buffers); the scalars come last, as the
// uniform burn appends from the launch's metadata.

{{enable}}
{{vector_type}}

const DH: u32 = {{head_dim}}u;
const DV: u32 = {{head_vectors}}u;
const TQ: u32 = {{tile_q}}u;
const MQ: u32 = {{score_queries}}u;
const MK: u32 = {{score_keys}}u;
const KT: u32 = {{key_tile}}u;
const WG: u32 = {{workgroup_size}}u;
const PARTS: u32 = {{stat_parts}}u;
const MQ2: u32 = {{value_queries}}u;
const NT: u32 = {{value_tiles}}u;
// Invocations along the keys of a score tile: KT = KEY_LANES * MK, WG = (TQ / MQ) * KEY_LANES.
const KEY_LANES: u32 = {{key_lanes}}u;
const NEG_BIG: f32 = -3.0e38;

struct Params {
    batch: u32,
    lq: u32,
    lc: u32,
    ls: u32,
    heads: u32,
    // Row stride of q, k, v and out, in V units.
    row: u32,
    tiles: u32,
    total: u32,
    scale: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> q: array<S>;
@group(0) @binding(1) var<storage, read_write> kc: array<S>;
@group(0) @binding(2) var<storage, read_write> vc: array<S>;
@group(0) @binding(3) var<storage, read_write> ks: array<S>;
@group(0) @binding(4) var<storage, read_write> vs: array<S>;
@group(0) @binding(5) var<storage, read_write> w: array<f32>;
@group(0) @binding(6) var<storage, read_write> output: array<S>;
@group(0) @binding(7) var<uniform> params: Params;

// Q tile, pre-scaled: q_tile[t * DV + dv].
var<workgroup> q_tile: array<V, {{q_tile_len}}>;
// Scores, then probabilities, of one key chunk: scores[j * TQ + t].
var<workgroup> scores: array<f32, {{scores_len}}>;
// Partial row statistics, [part][t]; part 0 also holds the running (then final) max and Σexp of
// each row, and after the statistics weight / Σexp.
var<workgroup> part_max: array<f32, {{parts_len}}>;
var<workgroup> part_sum: array<f32, {{parts_len}}>;
var<workgroup> weight_c: f32;
var<workgroup> weight_s: f32;

fn load_k(ctx: u32, i: u32) -> V {
    if (ctx == 0u) {
        return V(kc[i]);
    }
    return V(ks[i]);
}

fn load_v(ctx: u32, i: u32) -> V {
    if (ctx == 0u) {
        return V(vc[i]);
    }
    return V(vs[i]);
}

// Scores of keys j0 .. j0+kt (kt ≥ 1) for every query of the tile, into `scores`.
fn score_chunk(ctx: u32, k_base: u32, row: u32, j0: u32, kt: u32, tid: u32) {
    let qg = tid / KEY_LANES;
    let kg = tid - qg * KEY_LANES;
    var k_ofs: array<u32, MK>;
    for (var b = 0u; b < MK; b++) {
        // Keys past the chunk read its last key; their scores are not stored.
        k_ofs[b] = k_base + (j0 + min(kg + b * KEY_LANES, kt - 1u)) * row;
    }
    var s: array<f32, MQ * MK>;
    for (var dv = 0u; dv < DV; dv++) {
        var qv: array<V, MQ>;
        for (var a = 0u; a < MQ; a++) {
            qv[a] = q_tile[(qg * MQ + a) * DV + dv];
        }
        for (var b = 0u; b < MK; b++) {
            let kv = load_k(ctx, k_ofs[b] + dv);
            for (var a = 0u; a < MQ; a++) {
                s[a * MK + b] += vdot(qv[a], kv);
            }
        }
    }
    for (var b = 0u; b < MK; b++) {
        let j = kg + b * KEY_LANES;
        if (j < kt) {
            for (var a = 0u; a < MQ; a++) {
                scores[j * TQ + qg * MQ + a] = s[a * MK + b];
            }
        }
    }
}

@compute @workgroup_size({{workgroup_size}})
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let group_index = wid.y * nwg.x + wid.x;
    if (group_index >= params.total) {
        return;
    }
    let tile = group_index % params.tiles;
    let bh = group_index / params.tiles;
    let h = bh % params.heads;
    let b = bh / params.heads;
    let q0 = tile * TQ;
    let row = params.row;
    let col0 = h * DV;

    // Q tile, pre-scaled; rows past Lq are zero (computed, never written).
    for (var i = tid; i < TQ * DV; i += WG) {
        let t = i / DV;
        let dv = i - t * DV;
        let q_row = q0 + t;
        var v = V(0.0);
        if (q_row < params.lq) {
            v = V(q[(b * params.lq + q_row) * row + col0 + dv]) * params.scale;
        }
        q_tile[i] = v;
    }
    if (tid == 0u) {
        weight_c = w[b * 2u];
        weight_s = w[b * 2u + 1u];
    }
    // Workgroup-uniform, so that a zero weight may skip its context; also publishes q_tile.
    let w_c = workgroupUniformLoad(&weight_c);
    let w_s = workgroupUniformLoad(&weight_s);

    var acc: array<V, NT * MQ2>;

    for (var ctx = 0u; ctx < 2u; ctx++) {
        let weight = select(w_s, w_c, ctx == 0u);
        if (weight == 0.0) {
            continue;
        }
        let len = select(params.ls, params.lc, ctx == 0u);
        let base = b * len * row + col0;
        let chunks = (len + KT - 1u) / KT;

        if (tid < TQ) {
            part_max[tid] = NEG_BIG;
            part_sum[tid] = 0.0;
        }

        // Pass 1: row statistics (max, Σexp) over all chunks.
        for (var c = 0u; c < chunks; c++) {
            let j0 = c * KT;
            let kt = min(KT, len - j0);
            workgroupBarrier();
            score_chunk(ctx, base, row, j0, kt, tid);
            workgroupBarrier();
            if (tid < PARTS * TQ) {
                let part = tid / TQ;
                let t = tid - part * TQ;
                // Part 0 continues the running statistics; the others start afresh.
                var m = NEG_BIG;
                var l = 0.0;
                if (part == 0u) {
                    m = part_max[t];
                    l = part_sum[t];
                }
                var m_new = m;
                for (var j = part; j < kt; j += PARTS) {
                    m_new = max(m_new, scores[j * TQ + t]);
                }
                l *= exp(m - m_new);
                for (var j = part; j < kt; j += PARTS) {
                    l += exp(scores[j * TQ + t] - m_new);
                }
                part_max[tid] = m_new;
                part_sum[tid] = l;
            }
            workgroupBarrier();
            if (tid < TQ) {
                var m = part_max[tid];
                for (var p = 1u; p < PARTS; p++) {
                    m = max(m, part_max[p * TQ + tid]);
                }
                var l = 0.0;
                for (var p = 0u; p < PARTS; p++) {
                    l += part_sum[p * TQ + tid] * exp(part_max[p * TQ + tid] - m);
                }
                part_max[tid] = m;
                part_sum[tid] = l;
            }
        }
        if (tid < TQ) {
            part_sum[tid] = weight / part_sum[tid];
        }

        // Pass 2: probabilities (already × weight / Σexp) times V, into the accumulators.
        for (var c = 0u; c < chunks; c++) {
            let j0 = c * KT;
            let kt = min(KT, len - j0);
            if (chunks > 1u) {
                workgroupBarrier();
                score_chunk(ctx, base, row, j0, kt, tid);
            }
            workgroupBarrier();
            for (var p = tid; p < TQ * kt; p += WG) {
                let t = p % TQ;
                scores[p] = exp(scores[p] - part_max[t]) * part_sum[t];
            }
            workgroupBarrier();
            for (var r = 0u; r < NT; r++) {
                let m = tid + r * WG;
                if (m < (TQ / MQ2) * DV) {
                    let t0 = (m / DV) * MQ2;
                    let dv = m % DV;
                    var ofs = base + j0 * row + dv;
                    for (var j = 0u; j < kt; j++) {
                        let v = load_v(ctx, ofs);
                        for (var a = 0u; a < MQ2; a++) {
                            acc[r * MQ2 + a] = fma(V(scores[j * TQ + t0 + a]), v, acc[r * MQ2 + a]);
                        }
                        ofs += row;
                    }
                }
            }
        }
    }

    for (var r = 0u; r < NT; r++) {
        let m = tid + r * WG;
        if (m < (TQ / MQ2) * DV) {
            let t0 = (m / DV) * MQ2;
            let dv = m % DV;
            for (var a = 0u; a < MQ2; a++) {
                let q_row = q0 + t0 + a;
                if (q_row < params.lq) {
                    output[(b * params.lq + q_row) * row + col0 + dv] = S(acc[r * MQ2 + a]);
                }
            }
        }
    }
}
