// Fused decoupled cross-attention (Control-CLIP, DESIGN.md §2):
//
//   out[b, i, h*DH + d] = w[b,0] * Σ_j softmax_j(scale·q_i·kc_j) vc_j[d]
//                       + w[b,1] * Σ_j softmax_j(scale·q_i·ks_j) vs_j[d]
//
// q [B, Lq, H*DH]; kc, vc [B, Lc, H*DH]; ks, vs [B, Ls, H*DH]; w [B, 2]; out [B, Lq, H*DH];
// all f32, row-major, contiguous. scale = 1/sqrt(DH), passed in from the host.
//
// One workgroup per (b, h, tile of TQ queries). The workgroup reads its Q tile once (pre-scaled, into
// workgroup memory), then for each context in turn:
//   - computes a chunk of at most KT scores per query (threads over (key, query) pairs),
//   - folds the chunk into each row's running max and sum of exponentials,
//   - turns the scores into probabilities already multiplied by w / Σexp (so both contexts add into
//     one accumulator), and
//   - accumulates probabilities · V into registers (threads over (query, d) outputs).
// With at most KT keys (77-token contexts) the scores of the single chunk stay in workgroup memory
// between the statistics and the accumulation, so each key is scored once; longer contexts take a
// second pass over the chunks that recomputes the scores (any length ≥ 1 works). The output is
// written once, at the end. A context whose weight is exactly 0 (the unconditional half of a
// classifier-free-guidance batch uses (1, 0)) is skipped.
//
// Dispatch: a 2-D grid of workgroups, linearised as wid.y * num_workgroups.x + wid.x, so that more
// than 65535 workgroups fit WebGPU's per-dimension limit; workgroups past `total` return at once.
//
// Template constants (burn's SourceTemplate, filled by src/kernels/decoupled_attention.rs):
// head dim, query tile, key chunk, workgroup size, accumulators per thread, Q-tile row stride.
// Workgroup memory: TQ*QS + TQ*KT + 2*TQ + 1 floats, kept under WebGPU's 16 KiB default by the host.
//
// Conventions (burn 0.22.1 template kernels): entry point `main`; bindings in argument order; every
// storage binding read_write (burn's tensors may share buffers); the scalars come last, as the
// uniform burn appends from the launch's metadata.

const DH: u32 = {{head_dim}}u;
const TQ: u32 = {{tile_q}}u;
const KT: u32 = {{key_tile}}u;
const WG: u32 = {{workgroup_size}}u;
const NO: u32 = {{outputs_per_thread}}u;
const QS: u32 = {{q_stride}}u;
const NEG_BIG: f32 = -3.0e38;

struct Params {
    batch: u32,
    lq: u32,
    lc: u32,
    ls: u32,
    heads: u32,
    channels: u32,
    tiles: u32,
    total: u32,
    scale: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> q: array<f32>;
@group(0) @binding(1) var<storage, read_write> kc: array<f32>;
@group(0) @binding(2) var<storage, read_write> vc: array<f32>;
@group(0) @binding(3) var<storage, read_write> ks: array<f32>;
@group(0) @binding(4) var<storage, read_write> vs: array<f32>;
@group(0) @binding(5) var<storage, read_write> w: array<f32>;
@group(0) @binding(6) var<storage, read_write> output: array<f32>;
@group(0) @binding(7) var<uniform> params: Params;

// Q tile, pre-scaled: q_tile[t * QS + d] (QS odd, so neighbouring queries sit in different banks).
var<workgroup> q_tile: array<f32, {{q_tile_len}}>;
// Scores, then probabilities, of one key chunk: scores[j * TQ + t].
var<workgroup> scores: array<f32, {{scores_len}}>;
// Per query row: running max; running sum of exponentials, then weight / sum.
var<workgroup> row_max: array<f32, TQ>;
var<workgroup> row_sum: array<f32, TQ>;
var<workgroup> weight_c: f32;
var<workgroup> weight_s: f32;

// scale·q_t·k for the key row starting at `k_ofs` of context `ctx`.
fn score(ctx: u32, k_ofs: u32, t: u32) -> f32 {
    let q_ofs = t * QS;
    var s = 0.0;
    if (ctx == 0u) {
        for (var d = 0u; d < DH; d++) {
            s = fma(q_tile[q_ofs + d], kc[k_ofs + d], s);
        }
    } else {
        for (var d = 0u; d < DH; d++) {
            s = fma(q_tile[q_ofs + d], ks[k_ofs + d], s);
        }
    }
    return s;
}

// Scores of keys j0 .. j0+kt for every query of the tile, into `scores`.
fn score_chunk(ctx: u32, k_base: u32, channels: u32, j0: u32, kt: u32, tid: u32) {
    for (var p = tid; p < TQ * kt; p += WG) {
        let t = p % TQ;
        let j = p / TQ;
        scores[p] = score(ctx, k_base + (j0 + j) * channels, t);
    }
}

// Σ_j p[t, j] v[j0 + j, d] for one output element, p from `scores`.
fn weighted_values(ctx: u32, v_base: u32, channels: u32, j0: u32, kt: u32, t: u32) -> f32 {
    var a = 0.0;
    var ofs = v_base + j0 * channels;
    if (ctx == 0u) {
        for (var j = 0u; j < kt; j++) {
            a = fma(scores[j * TQ + t], vc[ofs], a);
            ofs += channels;
        }
    } else {
        for (var j = 0u; j < kt; j++) {
            a = fma(scores[j * TQ + t], vs[ofs], a);
            ofs += channels;
        }
    }
    return a;
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
    let channels = params.channels;
    let col0 = h * DH;

    // Q tile, pre-scaled; rows past Lq are zero (computed, never written).
    for (var i = tid; i < TQ * DH; i += WG) {
        let t = i / DH;
        let d = i - t * DH;
        let row = q0 + t;
        var v = 0.0;
        if (row < params.lq) {
            v = q[(b * params.lq + row) * channels + col0 + d] * params.scale;
        }
        q_tile[t * QS + d] = v;
    }

    if (tid == 0u) {
        weight_c = w[b * 2u];
        weight_s = w[b * 2u + 1u];
    }
    // Workgroup-uniform, so that a zero weight may skip its context; also publishes q_tile.
    let w_c = workgroupUniformLoad(&weight_c);
    let w_s = workgroupUniformLoad(&weight_s);

    var acc: array<f32, NO>;

    for (var ctx = 0u; ctx < 2u; ctx++) {
        let weight = select(w_s, w_c, ctx == 0u);
        if (weight == 0.0) {
            continue;
        }
        let len = select(params.ls, params.lc, ctx == 0u);
        let base = b * len * channels + col0;
        let chunks = (len + KT - 1u) / KT;

        if (tid < TQ) {
            row_max[tid] = NEG_BIG;
            row_sum[tid] = 0.0;
        }

        // Pass 1: row statistics (max, Σexp) over all chunks.
        for (var c = 0u; c < chunks; c++) {
            let j0 = c * KT;
            let kt = min(KT, len - j0);
            workgroupBarrier();
            score_chunk(ctx, base, channels, j0, kt, tid);
            workgroupBarrier();
            if (tid < TQ) {
                var m = row_max[tid];
                for (var j = 0u; j < kt; j++) {
                    m = max(m, scores[j * TQ + tid]);
                }
                var l = row_sum[tid] * exp(row_max[tid] - m);
                for (var j = 0u; j < kt; j++) {
                    l += exp(scores[j * TQ + tid] - m);
                }
                row_max[tid] = m;
                row_sum[tid] = l;
            }
        }
        workgroupBarrier();
        if (tid < TQ) {
            row_sum[tid] = weight / row_sum[tid];
        }

        // Pass 2: probabilities (already × weight / Σexp) times V, into the accumulators.
        for (var c = 0u; c < chunks; c++) {
            let j0 = c * KT;
            let kt = min(KT, len - j0);
            if (chunks > 1u) {
                workgroupBarrier();
                score_chunk(ctx, base, channels, j0, kt, tid);
            }
            workgroupBarrier();
            for (var p = tid; p < TQ * kt; p += WG) {
                let t = p % TQ;
                scores[p] = exp(scores[p] - row_max[t]) * row_sum[t];
            }
            workgroupBarrier();
            for (var r = 0u; r < NO; r++) {
                let o = tid + r * WG;
                if (o < TQ * DH) {
                    let t = o / DH;
                    let d = o - t * DH;
                    acc[r] += weighted_values(ctx, base + d, channels, j0, kt, t);
                }
            }
        }
    }

    for (var r = 0u; r < NO; r++) {
        let o = tid + r * WG;
        if (o < TQ * DH) {
            let t = o / DH;
            let d = o - t * DH;
            let row = q0 + t;
            if (row < params.lq) {
                output[(b * params.lq + row) * channels + col0 + d] = acc[r];
            }
        }
    }
}
