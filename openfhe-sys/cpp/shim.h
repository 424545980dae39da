/* Peregrine's C API over OpenFHE CKKS (FIXEDMANUAL scaling, HYBRID key switching).
 *
 * Every fallible function returns 0 on success; on failure it returns non-zero and stores a
 * NUL-terminated message in *err (release with pf_string_free). No C++ exception crosses this
 * boundary. Scales are tracked by the caller: functions that need the caller's scale of a
 * ciphertext take it as an argument ("true scale"); OpenFHE's own scale bookkeeping (Δ^deg) is
 * only used to translate constants.
 */
#ifndef PEREGRINE_OPENFHE_SHIM_H
#define PEREGRINE_OPENFHE_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct PfContext PfContext;
typedef struct PfCiphertext PfCiphertext;

typedef struct PfBytes {
    uint8_t* data;
    size_t len;
} PfBytes;

/* Receives serialised bytes piece by piece; returns 0 to continue. */
typedef int (*PfSink)(void* ctx, const uint8_t* data, size_t len);

typedef struct PfParams {
    uint32_t ring_dim;          /* 0: OpenFHE picks the smallest secure one */
    uint32_t mult_depth;        /* total multiplicative depth (model levels + bootstrap depth) */
    uint32_t scale_bits;
    uint32_t first_mod_bits;
    uint32_t num_large_digits;  /* 0: OpenFHE default */
    int32_t secure;             /* 1: HEStd_128_classic enforced by OpenFHE; 0: HEStd_NotSet */
    int32_t sparse_secret;      /* 1: SPARSE_ENCAPSULATED (uniform ternary key, sparse key inside bootstrapping); 0: UNIFORM_TERNARY */
    int32_t bootstrap;          /* 1: enable FHE (bootstrapping) */
    uint32_t level_budget_enc;
    uint32_t level_budget_dec;
    uint32_t slots;             /* 0: N/2 */
} PfParams;

void pf_string_free(char* s);
void pf_bytes_free(PfBytes b);

int pf_bootstrap_depth(uint32_t enc, uint32_t dec, int32_t sparse_secret, uint32_t* out, char** err);

int pf_context_new(const PfParams* p, PfContext** out, char** err);
void pf_context_free(PfContext* c);
/* Ring dimension, number of ciphertext moduli (towers), log2 of Q·P (ciphertext and key-switching moduli). */
int pf_context_info(const PfContext* c, uint32_t* ring_dim, uint32_t* towers, double* log_qp, char** err);
/* The ciphertext moduli q_0 … q_{towers-1} as doubles. */
int pf_context_moduli(const PfContext* c, double* out, size_t cap, char** err);
/* Key generation: secret key, relinearisation key, rotation keys for `steps`, bootstrapping keys. */
int pf_keygen(PfContext* c, const int32_t* steps, size_t n, int32_t bootstrap, char** err);
int pf_has_secret_key(const PfContext* c);
/* Evaluation keys and the context (no secret key), streamed to `sink`. */
int pf_serialize_eval_keys(const PfContext* c, PfSink sink, void* sink_ctx, char** err);
/* A server context from serialised evaluation keys; sets up bootstrapping precomputations if asked. */
int pf_server_new(const uint8_t* data, size_t len, int32_t bootstrap, uint32_t enc, uint32_t dec, uint32_t slots,
                  PfContext** out, char** err);
/* The client's secret state (context, public and secret key) and a client context rebuilt from it. */
int pf_save_client(const PfContext* c, PfBytes* out, char** err);
int pf_load_client(const uint8_t* data, size_t len, PfContext** out, char** err);
/* A server context sharing a client's context and evaluation keys in this process (no secret
 * key, no serialisation): for benchmarks at sizes whose key files would not fit in memory twice. */
int pf_server_from_client(const PfContext* c, PfContext** out, char** err);
/* Rotation indices that have keys (returns count in *n; writes up to cap). */
int pf_rotation_indices(const PfContext* c, int32_t* out, size_t cap, size_t* n, char** err);

int pf_encrypt(const PfContext* c, const double* v, size_t n, uint32_t level, double scale, PfCiphertext** out,
               char** err);
int pf_decrypt(const PfContext* c, const PfCiphertext* ct, double scale, double* out, size_t cap, size_t* out_len,
               char** err);

void pf_ct_free(PfCiphertext* ct);
PfCiphertext* pf_ct_clone(const PfCiphertext* ct);
/* Level (number of moduli above q_0) and OpenFHE's noise-scale degree. */
int pf_ct_info(const PfCiphertext* ct, uint32_t* level, uint32_t* deg);

int pf_add(const PfContext* c, const PfCiphertext* a, const PfCiphertext* b, PfCiphertext** out, char** err);
int pf_sub(const PfContext* c, const PfCiphertext* a, const PfCiphertext* b, PfCiphertext** out, char** err);
int pf_mul(const PfContext* c, const PfCiphertext* a, const PfCiphertext* b, PfCiphertext** out, char** err);
int pf_square(const PfContext* c, const PfCiphertext* a, PfCiphertext** out, char** err);
int pf_negate(const PfContext* c, const PfCiphertext* a, PfCiphertext** out, char** err);
/* a + p where p holds `v` at a's true scale `scale`. */
int pf_add_plain(const PfContext* c, const PfCiphertext* a, const double* v, size_t n, double scale, int32_t subtract,
                 PfCiphertext** out, char** err);
/* a · p where p holds `v` at scale `pscale`. */
int pf_mul_plain(const PfContext* c, const PfCiphertext* a, const double* v, size_t n, double pscale,
                 PfCiphertext** out, char** err);
/* a + k in every slot, with a at true scale `scale`. */
int pf_add_scalar(const PfContext* c, const PfCiphertext* a, double k, double scale, PfCiphertext** out, char** err);
/* a · round(k·kscale). */
int pf_mul_scalar(const PfContext* c, const PfCiphertext* a, double k, double kscale, PfCiphertext** out, char** err);
int pf_mul_integer(const PfContext* c, const PfCiphertext* a, int64_t k, PfCiphertext** out, char** err);
int pf_rescale(const PfContext* c, const PfCiphertext* a, PfCiphertext** out, char** err);
int pf_drop_to_level(const PfContext* c, const PfCiphertext* a, uint32_t level, PfCiphertext** out, char** err);
int pf_rotate(const PfContext* c, const PfCiphertext* a, int32_t step, PfCiphertext** out, char** err);
/* Hoisted rotations: one decomposition shared by all `n` steps. */
int pf_rotate_many(const PfContext* c, const PfCiphertext* a, const int32_t* steps, size_t n, PfCiphertext** outs,
                   char** err);
/* Bootstraps a ciphertext whose message (at OpenFHE's scale) lies in [-1, 1]; returns it at noise degree 1. */
int pf_bootstrap(const PfContext* c, const PfCiphertext* a, PfCiphertext** out, char** err);

int pf_serialize_ct(const PfCiphertext* ct, PfBytes* out, char** err);
int pf_deserialize_ct(const PfContext* c, const uint8_t* data, size_t len, PfCiphertext** out, char** err);

#ifdef __cplusplus
}
#endif
#endif
