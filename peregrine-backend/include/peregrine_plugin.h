/*
 * Peregrine backend plugin C ABI, version 3 (2 added client_save_secret and client_load; 3 added
 * rotate_many, client_write_evaluation_keys, server_from_file and client_local_server).
 *
 * A plugin is a shared library that exports
 *
 *     const PeregrineVTable *peregrine_plugin_entry(void);
 *
 * returning a pointer to a static function table. The host checks `abi_version` (must equal
 * PEREGRINE_ABI_VERSION) and `struct_size` (must equal sizeof(PeregrineVTable)) before using
 * anything else.
 *
 * Conventions
 * - Every fallible function returns a status: 0 success, 1 error, 2 caught panic/exception.
 *   On failure it stores a NUL-terminated UTF-8 message in *err, which the host releases with
 *   string_free. No C++ exception or Rust panic may cross this boundary.
 * - Handles (client, server, ciphertext, plaintext) are opaque pointers owned by the host once
 *   returned and released with the matching *_free function. Ciphertexts and plaintexts made by
 *   a client are usable by a server of the same plugin and vice versa.
 * - Handles must be safe to use from several threads at once for read-only operations; every
 *   operation below only reads its inputs and returns a new handle.
 * - Parameters, key requests and capabilities are JSON text. A key request is
 *   {"rotations":[1,-2,...],"bootstrap":false}; capabilities follow peregrine_backend::Capabilities.
 * - Rotations are left rotations: out[i] = a[(i + step) mod slots].
 * - The Rust definition (peregrine_backend::plugin::abi::PluginVTable) is authoritative; a test
 *   compiles this header and checks that sizes and offsets agree.
 */
#ifndef PEREGRINE_PLUGIN_H
#define PEREGRINE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PEREGRINE_ABI_VERSION 3u
#define PEREGRINE_STATUS_OK 0
#define PEREGRINE_STATUS_ERROR 1
#define PEREGRINE_STATUS_PANIC 2

/* A byte buffer allocated by the plugin; release with bytes_free. */
typedef struct PgBytes {
    uint8_t *data;
    size_t len;
} PgBytes;

/* Receives a chunk of a byte stream; returns 0 to continue, anything else to abort. */
typedef int32_t (*PgSink)(void *ctx, const uint8_t *data, size_t len);

typedef void *PgHandle;
typedef const void *PgCHandle;

typedef int32_t (*PgBinaryFn)(PgCHandle server, PgCHandle a, PgCHandle b, PgHandle *out, char **err);
typedef int32_t (*PgUnaryFn)(PgCHandle server, PgCHandle a, PgHandle *out, char **err);

typedef struct PeregrineVTable {
    uint32_t abi_version;
    uint32_t struct_size;
    const char *name;
    const char *description;

    void (*string_free)(char *s);
    void (*bytes_free)(PgBytes b);

    int32_t (*capabilities)(const char *params_json, char **out_json, char **err);

    int32_t (*client_new)(const char *params_json, const char *request_json, PgHandle *out, char **err);
    void (*client_free)(PgHandle client);
    int32_t (*client_capabilities)(PgCHandle client, char **out_json, char **err);
    int32_t (*client_evaluation_keys)(PgCHandle client, PgBytes *out, char **err);
    int32_t (*client_encode)(PgCHandle client, const double *values, size_t len, uint32_t level, double scale,
                             PgHandle *out, char **err);
    int32_t (*client_encrypt)(PgCHandle client, PgCHandle pt, PgHandle *out, char **err);
    int32_t (*client_decrypt)(PgCHandle client, PgCHandle ct, PgHandle *out, char **err);
    int32_t (*client_decode)(PgCHandle client, PgCHandle pt, double *out, size_t cap, size_t *out_len, char **err);
    int32_t (*client_serialize_ct)(PgCHandle client, PgCHandle ct, PgBytes *out, char **err);
    int32_t (*client_deserialize_ct)(PgCHandle client, const uint8_t *data, size_t len, PgHandle *out, char **err);

    int32_t (*server_new)(const uint8_t *keys, size_t len, PgHandle *out, char **err);
    void (*server_free)(PgHandle server);
    int32_t (*server_capabilities)(PgCHandle server, char **out_json, char **err);
    int32_t (*server_rotation_steps)(PgCHandle server, char **out_json, char **err);
    int32_t (*server_modulus)(PgCHandle server, uint32_t level, double *out, char **err);

    void (*ct_free)(PgHandle ct);
    PgHandle (*ct_clone)(PgCHandle ct);
    int32_t (*ct_info)(PgCHandle server, PgCHandle ct, uint32_t *level, double *scale);
    void (*pt_free)(PgHandle pt);
    PgHandle (*pt_clone)(PgCHandle pt);
    int32_t (*pt_info)(PgCHandle server, PgCHandle pt, uint32_t *level, double *scale);

    int32_t (*encode)(PgCHandle server, const double *values, size_t len, uint32_t level, double scale,
                      PgHandle *out, char **err);
    PgBinaryFn add;
    PgBinaryFn sub;
    PgBinaryFn mul;
    PgBinaryFn add_plain;
    PgBinaryFn sub_plain;
    PgBinaryFn mul_plain;
    PgUnaryFn negate;
    PgUnaryFn square;
    PgUnaryFn rescale;
    PgUnaryFn bootstrap;
    int32_t (*add_scalar)(PgCHandle server, PgCHandle a, double c, PgHandle *out, char **err);
    int32_t (*mul_scalar)(PgCHandle server, PgCHandle a, double c, double scale, PgHandle *out, char **err);
    int32_t (*mul_integer)(PgCHandle server, PgCHandle a, int64_t k, PgHandle *out, char **err);
    int32_t (*drop_to_level)(PgCHandle server, PgCHandle a, uint32_t level, PgHandle *out, char **err);
    int32_t (*rotate)(PgCHandle server, PgCHandle a, int64_t step, PgHandle *out, char **err);
    int32_t (*eval_poly)(PgCHandle server, PgCHandle a, const double *coeffs, size_t n, PgHandle *out, char **err);
    int32_t (*serialize_ct)(PgCHandle server, PgCHandle ct, PgBytes *out, char **err);
    int32_t (*deserialize_ct)(PgCHandle server, const uint8_t *data, size_t len, PgHandle *out, char **err);
    /* ABI 2: the client's secret state, and a client rebuilt from it. */
    int32_t (*client_save_secret)(PgCHandle client, PgBytes *out, char **err);
    int32_t (*client_load)(const uint8_t *data, size_t len, PgHandle *out, char **err);
    /* ABI 3: hoisted rotations (out receives n handles), streamed evaluation keys, a server from
     * a key file, and a server sharing the client's keys in memory (*out = NULL: unsupported). */
    int32_t (*rotate_many)(PgCHandle server, PgCHandle a, const int64_t *steps, size_t n, PgHandle *out, char **err);
    int32_t (*client_write_evaluation_keys)(PgCHandle client, PgSink sink, void *sink_ctx, char **err);
    int32_t (*server_from_file)(const char *path, PgHandle *out, char **err);
    int32_t (*client_local_server)(PgCHandle client, PgHandle *out, char **err);
} PeregrineVTable;

/* The one symbol a plugin exports. */
const PeregrineVTable *peregrine_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* PEREGRINE_PLUGIN_H */
