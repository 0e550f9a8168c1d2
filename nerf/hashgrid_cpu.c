/* The hash grid's lookup fused into one pass per point, for the CPU (nerf/hashgrid_cpu.py builds it).
 *
 * The same arithmetic as HashGridEncoding._torch_forward, corner by corner: level l maps a point p in
 * [0, 1]^3 to p * scale_l + 0.5; the eight surrounding grid vertices are indexed directly on the
 * coarse levels (modulo the level's size) and through tiny-cuda-nn's XOR-of-primes hash, in uint32,
 * on the others (whose sizes are powers of two); features are interpolated trilinearly.
 * The backward pass gives the table's gradient only; each thread accumulates into its own buffer,
 * so no atomics are needed. Threads are plain pthreads: no second OpenMP runtime beside PyTorch's.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>

typedef struct {
    const float *points;    /* [N, 3] */
    const float *table;     /* [rows, F] (forward) */
    const float *grad_out;  /* [N, L * F] (backward) */
    float *features;        /* [N, L * F] (forward) */
    float *grad_table;      /* [rows, F] (backward: this thread's buffer) */
    const float *scales;    /* [L] */
    const int32_t *sizes;   /* [L] */
    const int32_t *offsets; /* [L] */
    const int32_t *resolutions; /* [L] */
    int64_t begin, end;
    int n_levels, n_features, n_dense_levels;
} Job;

static const uint32_t PRIMES[3] = {1u, 2654435761u, 805459861u};

/* The eight corners of point i on level l: table rows and trilinear weights, x slowest, z fastest. */
static void corners(const Job *job, int64_t i, int l, int64_t rows[8], float weights[8]) {
    int32_t low[3];
    float frac[3];
    for (int axis = 0; axis < 3; ++axis) {
        float scaled = job->points[3 * i + axis] * job->scales[l] + 0.5f;
        float below = floorf(scaled);
        low[axis] = (int32_t)below;
        frac[axis] = scaled - below;
    }
    const int32_t size = job->sizes[l];
    const int32_t resolution = job->resolutions[l];
    for (int corner = 0; corner < 8; ++corner) {
        const int32_t side[3] = {(corner >> 2) & 1, (corner >> 1) & 1, corner & 1};
        int64_t index;
        if (l < job->n_dense_levels) {
            int32_t dense = (low[0] + side[0]) + (low[1] + side[1]) * resolution
                            + (low[2] + side[2]) * resolution * resolution;
            index = ((dense % size) + size) % size;
        } else {
            uint32_t hash = 0;
            for (int axis = 0; axis < 3; ++axis) hash ^= (uint32_t)(low[axis] + side[axis]) * PRIMES[axis];
            index = hash & (uint32_t)(size - 1);
        }
        rows[corner] = job->offsets[l] + index;
        float weight = 1.0f;
        for (int axis = 0; axis < 3; ++axis) weight *= side[axis] ? frac[axis] : 1.0f - frac[axis];
        weights[corner] = weight;
    }
}

/* The forward pass (job->features set: interpolate the table) or the backward pass (job->grad_table set:
 * accumulate the features' gradient into it) over the job's range of points. */
static void *lookup_range(void *arg) {
    const Job *job = arg;
    const int F = job->n_features;
    int64_t rows[8];
    float weights[8];
    for (int64_t i = job->begin; i < job->end; ++i) {
        for (int l = 0; l < job->n_levels; ++l) {
            corners(job, i, l, rows, weights);
            const int64_t at = (i * job->n_levels + l) * F;
            if (job->features) {
                float *out = job->features + at;
                for (int f = 0; f < F; ++f) out[f] = 0.0f;
                for (int corner = 0; corner < 8; ++corner) {
                    const float *entry = job->table + rows[corner] * F;
                    for (int f = 0; f < F; ++f) out[f] += weights[corner] * entry[f];
                }
            } else {
                const float *grad = job->grad_out + at;
                for (int corner = 0; corner < 8; ++corner) {
                    float *entry = job->grad_table + rows[corner] * F;
                    for (int f = 0; f < F; ++f) entry[f] += weights[corner] * grad[f];
                }
            }
        }
    }
    return NULL;
}

/* Runs lookup_range over points [0, n) in n_threads contiguous ranges; range t accumulates into
 * grad_table + t * grad_stride. A thread that cannot be started runs its range on the caller's. */
static void run_parallel(Job base, int64_t n, int n_threads, int64_t grad_stride) {
    enum { MAX_THREADS = 64 };
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    Job jobs[MAX_THREADS];
    n_threads = n_threads < 1 ? 1 : (n_threads > MAX_THREADS ? MAX_THREADS : n_threads);
    for (int t = 0; t < n_threads; ++t) {
        jobs[t] = base;
        jobs[t].begin = n * t / n_threads;
        jobs[t].end = n * (t + 1) / n_threads;
        if (base.grad_table) jobs[t].grad_table = base.grad_table + t * grad_stride;
    }
    for (int t = 1; t < n_threads; ++t) started[t] = pthread_create(&threads[t], NULL, lookup_range, &jobs[t]) == 0;
    lookup_range(&jobs[0]);
    for (int t = 1; t < n_threads; ++t) {
        if (started[t]) pthread_join(threads[t], NULL);
        else lookup_range(&jobs[t]);
    }
}

#define LEVEL_ARGUMENTS const float *scales, const int32_t *sizes, const int32_t *offsets, \
    const int32_t *resolutions, int n_levels, int n_dense_levels, int n_features

/* features [N, L * F] from points [N, 3] and table [rows, F]. */
void hashgrid_forward(const float *points, int64_t n, const float *table, float *features,
                      LEVEL_ARGUMENTS, int n_threads) {
    Job job = {points, table, NULL, features, NULL, scales, sizes, offsets, resolutions,
               0, 0, n_levels, n_features, n_dense_levels};
    run_parallel(job, n, n_threads, 0);
}

/* grad_tables [n_threads, rows, F], zeroed by the caller, from grad_out [N, L * F]; the caller
 * sums the buffers. */
void hashgrid_backward(const float *points, int64_t n, const float *grad_out, float *grad_tables,
                       int64_t n_rows, LEVEL_ARGUMENTS, int n_threads) {
    Job job = {points, NULL, grad_out, NULL, grad_tables, scales, sizes, offsets, resolutions,
               0, 0, n_levels, n_features, n_dense_levels};
    run_parallel(job, n, n_threads, n_rows * n_features);
}
