// Peregrine's C shim over OpenFHE CKKS. See shim.h for the contract.
#include "shim.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <set>
#include <tuple>
#include <sstream>
#include <string>
#include <vector>

#include "openfhe.h"
#include "ciphertext-ser.h"
#include "cryptocontext-ser.h"
#include "key/key-ser.h"
#include "scheme/ckksrns/ckksrns-ser.h"

using namespace lbcrypto;

struct PfContext {
    CryptoContext<DCRTPoly> cc;
    KeyPair<DCRTPoly> keys;  // empty on a server
    uint32_t slots = 0;
    uint32_t scale_bits = 0;
    bool bootstrap = false;
    std::string tag;  // key tag of the evaluation keys
};

struct PfCiphertext {
    Ciphertext<DCRTPoly> ct;
};

namespace {

// OpenFHE keeps evaluation keys in process-wide maps keyed by key tag, and validates parameter
// generation through a process-wide variable. Context creation and key-map changes are
// therefore serialised here, and keys are reference-counted per tag so that a client and a
// server in one process share them and the last owner releases them.
std::mutex& global_lock() {
    static std::mutex m;
    return m;
}
std::map<std::string, int>& tag_refs() {
    static std::map<std::string, int> m;
    return m;
}
void retain_tag(const std::string& tag) {
    tag_refs()[tag] += 1;
}
void release_tag(const std::string& tag) {
    auto it = tag_refs().find(tag);
    if (it == tag_refs().end())
        return;
    if (--it->second == 0) {
        tag_refs().erase(it);
        CryptoContextImpl<DCRTPoly>::ClearEvalMultKeys(tag);
        CryptoContextImpl<DCRTPoly>::ClearEvalAutomorphismKeys(tag);
    }
}

// An output stream buffer that hands its bytes to the caller's sink in 1 MiB pieces.
class SinkBuf : public std::streambuf {
  public:
    SinkBuf(PfSink sink, void* ctx) : sink_(sink), ctx_(ctx), buf_(1 << 20) {
        setp(buf_.data(), buf_.data() + buf_.size());
    }
    ~SinkBuf() override {
        flush_out();
    }
    bool ok() const {
        return ok_;
    }

  protected:
    int overflow(int ch) override {
        if (!flush_out())
            return traits_type::eof();
        if (ch != traits_type::eof()) {
            *pptr() = static_cast<char>(ch);
            pbump(1);
        }
        return ch == traits_type::eof() ? 0 : ch;
    }
    int sync() override {
        return flush_out() ? 0 : -1;
    }

  private:
    bool flush_out() {
        size_t n = static_cast<size_t>(pptr() - pbase());
        if (n && ok_)
            ok_ = sink_(ctx_, reinterpret_cast<const uint8_t*>(pbase()), n) == 0;
        setp(buf_.data(), buf_.data() + buf_.size());
        return ok_;
    }
    PfSink sink_;
    void* ctx_;
    std::vector<char> buf_;
    bool ok_ = true;
};

// A read-only stream buffer over caller memory (no copy).
class MemBuf : public std::streambuf {
  public:
    MemBuf(const char* p, size_t n) {
        char* b = const_cast<char*>(p);
        setg(b, b, b + n);
    }
};

// The features every Peregrine context uses (enabling one twice is harmless).
void enable_features(const CryptoContext<DCRTPoly>& cc, bool bootstrap) {
    cc->Enable(PKE);
    cc->Enable(KEYSWITCH);
    cc->Enable(LEVELEDSHE);
    cc->Enable(ADVANCEDSHE);
    if (bootstrap)
        cc->Enable(FHE);
}

// OpenFHE hands out one shared context per parameter set; setting its bootstrapping up again
// would replace precomputations another thread may be using. Done once per context and budget
// (under the global lock).
void bootstrap_setup_once(const CryptoContext<DCRTPoly>& cc, uint32_t enc, uint32_t dec, uint32_t slots) {
    static std::set<std::tuple<const void*, uint32_t, uint32_t, uint32_t>> done;
    auto key = std::make_tuple(static_cast<const void*>(cc.get()), enc, dec, slots);
    if (done.count(key))
        return;
    cc->EvalBootstrapSetup({enc, dec}, {0, 0}, slots);
    done.insert(key);
}

// After OpenFHE refuses a secure parameter set, its parameter-size check keeps a stale value
// that breaks the next context built without a security level; building one small secure
// context resets it.
void reset_parameter_check() {
    try {
        CCParams<CryptoContextCKKSRNS> q;
        q.SetMultiplicativeDepth(1);
        q.SetScalingModSize(40);
        q.SetFirstModSize(50);
        q.SetScalingTechnique(FIXEDMANUAL);
        q.SetKeySwitchTechnique(HYBRID);
        q.SetSecurityLevel(HEStd_128_classic);
        GenCryptoContext(q);
    }
    catch (...) {
    }
}

void set_err(char** err, const std::string& m) {
    if (err) {
        char* s = static_cast<char*>(std::malloc(m.size() + 1));
        if (s) {
            std::memcpy(s, m.c_str(), m.size() + 1);
            *err = s;
        }
    }
}

template <typename F>
int guarded(char** err, F&& f) {
    try {
        f();
        return 0;
    }
    catch (const std::exception& e) {
        set_err(err, std::string("OpenFHE: ") + e.what());
    }
    catch (...) {
        set_err(err, "OpenFHE: unknown C++ exception");
    }
    return 1;
}

void need(bool ok, const char* what) {
    if (!ok)
        throw std::runtime_error(what);
}

uint32_t towers(const Ciphertext<DCRTPoly>& ct) {
    return static_cast<uint32_t>(ct->GetElements()[0].GetNumOfElements());
}

uint32_t total_towers(const PfContext* c) {
    return static_cast<uint32_t>(c->cc->GetCryptoParameters()->GetElementParams()->GetParams().size());
}

double internal_scale(const PfContext* c, uint32_t deg) {
    return std::pow(2.0, static_cast<double>(c->scale_bits) * deg);
}

PfCiphertext* wrap(Ciphertext<DCRTPoly> ct) {
    return new PfCiphertext{std::move(ct)};
}

Plaintext encode(const PfContext* c, const double* v, size_t n, double factor, uint32_t deg, uint32_t level) {
    need(n <= c->slots, "more values than slots");
    need(level < total_towers(c), "level above the fresh level");
    std::vector<double> vals(c->slots, 0.0);
    double big = 0.0;
    for (size_t i = 0; i < n; ++i) {
        vals[i] = v[i] * factor;
        big     = std::max(big, std::abs(vals[i]));
    }
    // Values so small that every encoded coefficient rounds to 0 are the zero vector: OpenFHE
    // refuses them ("scaling factor too small"). Below 2·slots/scale they are also far below
    // CKKS noise, so the zero vector is encoded instead.
    if (big * internal_scale(c, deg) < 2.0 * c->slots)
        std::fill(vals.begin(), vals.end(), 0.0);
    uint32_t ofhe_level = total_towers(c) - 1 - level;
    return c->cc->MakeCKKSPackedPlaintext(vals, deg, ofhe_level, nullptr, c->slots);
}

void check_pair(const Ciphertext<DCRTPoly>& a, const Ciphertext<DCRTPoly>& b) {
    need(towers(a) == towers(b), "operands at different levels");
}

// Copies b with a's noise-scale degree when they differ (the caller guarantees equal true scales).
Ciphertext<DCRTPoly> aligned(const Ciphertext<DCRTPoly>& a, const Ciphertext<DCRTPoly>& b) {
    if (a->GetNoiseScaleDeg() == b->GetNoiseScaleDeg())
        return b;
    auto x = b->Clone();
    x->SetNoiseScaleDeg(a->GetNoiseScaleDeg());
    x->SetScalingFactor(a->GetScalingFactor());
    return x;
}

}  // namespace

extern "C" {

void pf_string_free(char* s) {
    std::free(s);
}

void pf_bytes_free(PfBytes b) {
    std::free(b.data);
}

static int put_bytes(const std::string& s, PfBytes* out) {
    out->data = static_cast<uint8_t*>(std::malloc(s.size() ? s.size() : 1));
    if (!out->data)
        throw std::bad_alloc();
    std::memcpy(out->data, s.data(), s.size());
    out->len = s.size();
    return 0;
}

int pf_bootstrap_depth(uint32_t enc, uint32_t dec, int32_t sparse, uint32_t* out, char** err) {
    return guarded(err, [&] {
        *out = FHECKKSRNS::GetBootstrapDepth({enc, dec}, sparse ? SPARSE_ENCAPSULATED : UNIFORM_TERNARY);
    });
}

int pf_context_new(const PfParams* p, PfContext** out, char** err) {
    return guarded(err, [&] {
        need(p && out, "null argument");
        CCParams<CryptoContextCKKSRNS> q;
        q.SetMultiplicativeDepth(p->mult_depth);
        q.SetScalingModSize(p->scale_bits);
        q.SetFirstModSize(p->first_mod_bits);
        q.SetScalingTechnique(FIXEDMANUAL);
        q.SetKeySwitchTechnique(HYBRID);
        q.SetSecretKeyDist(p->sparse_secret ? SPARSE_ENCAPSULATED : UNIFORM_TERNARY);
        if (p->num_large_digits)
            q.SetNumLargeDigits(p->num_large_digits);
        q.SetSecurityLevel(p->secure ? HEStd_128_classic : HEStd_NotSet);
        if (p->ring_dim)
            q.SetRingDim(p->ring_dim);
        if (p->slots)
            q.SetBatchSize(p->slots);
        std::lock_guard<std::mutex> lock(global_lock());
        CryptoContext<DCRTPoly> cc;
        try {
            cc = GenCryptoContext(q);
        }
        catch (...) {
            reset_parameter_check();
            throw;
        }
        enable_features(cc, p->bootstrap != 0);
        auto* c       = new PfContext();
        c->cc         = cc;
        c->slots      = p->slots ? p->slots : cc->GetRingDimension() / 2;
        c->scale_bits = p->scale_bits;
        c->bootstrap  = p->bootstrap != 0;
        if (c->bootstrap) {
            try {
                bootstrap_setup_once(cc, p->level_budget_enc, p->level_budget_dec, c->slots);
            }
            catch (...) {
                delete c;
                throw;
            }
        }
        *out = c;
    });
}

void pf_context_free(PfContext* c) {
    try {
        if (c && !c->tag.empty()) {
            std::lock_guard<std::mutex> lock(global_lock());
            release_tag(c->tag);
        }
        delete c;
    }
    catch (...) {
    }
}

int pf_context_info(const PfContext* c, uint32_t* ring_dim, uint32_t* n, double* log_qp, char** err) {
    return guarded(err, [&] {
        need(c, "null context");
        *ring_dim = c->cc->GetRingDimension();
        *n        = total_towers(c);
        double bits = 0;
        for (auto& m : c->cc->GetCryptoParameters()->GetElementParams()->GetParams())
            bits += std::log2(m->GetModulus().ConvertToDouble());
        auto rns = std::dynamic_pointer_cast<CryptoParametersRNS>(c->cc->GetCryptoParameters());
        if (rns && rns->GetParamsP())
            for (auto& m : rns->GetParamsP()->GetParams())
                bits += std::log2(m->GetModulus().ConvertToDouble());
        *log_qp = bits;
    });
}

int pf_context_moduli(const PfContext* c, double* out, size_t cap, char** err) {
    return guarded(err, [&] {
        auto& ps = c->cc->GetCryptoParameters()->GetElementParams()->GetParams();
        need(cap >= ps.size(), "moduli buffer too small");
        for (size_t i = 0; i < ps.size(); ++i)
            out[i] = ps[i]->GetModulus().ConvertToDouble();
    });
}

int pf_keygen(PfContext* c, const int32_t* steps, size_t n, int32_t bootstrap, char** err) {
    return guarded(err, [&] {
        need(c, "null context");
        need(c->tag.empty(), "keys were already generated in this context");
        std::lock_guard<std::mutex> lock(global_lock());
        c->keys = c->cc->KeyGen();
        need(c->keys.good(), "key generation failed");
        c->tag = c->keys.secretKey->GetKeyTag();
        retain_tag(c->tag);
        c->cc->EvalMultKeyGen(c->keys.secretKey);
        if (n) {
            std::vector<int32_t> idx(steps, steps + n);
            c->cc->EvalRotateKeyGen(c->keys.secretKey, idx);
        }
        if (bootstrap) {
            need(c->bootstrap, "bootstrapping keys requested but the context was built without bootstrapping");
            c->cc->EvalBootstrapKeyGen(c->keys.secretKey, c->slots);
        }
    });
}

int pf_has_secret_key(const PfContext* c) {
    return c && c->keys.secretKey ? 1 : 0;
}

int pf_serialize_eval_keys(const PfContext* c, PfSink sink, void* sink_ctx, char** err) {
    return guarded(err, [&] {
        need(c && sink, "null argument");
        need(c->keys.secretKey != nullptr, "no keys were generated in this context");
        // Streamed to the caller: the (large) rotation keys are never held twice in memory.
        SinkBuf buf(sink, sink_ctx);
        std::ostream os(&buf);
        const std::string tag = c->keys.secretKey->GetKeyTag();
        auto section = [&os](const std::string& body) {
            uint64_t n = body.size();
            os.write(reinterpret_cast<const char*>(&n), sizeof n);
            os << body;
        };
        section(tag);
        std::ostringstream ccs, mult;
        Serial::Serialize(c->cc, ccs, SerType::BINARY);
        section(ccs.str());
        need(CryptoContextImpl<DCRTPoly>::SerializeEvalMultKey(mult, SerType::BINARY, tag), "serialising the relinearisation key failed");
        section(mult.str());
        // The rotation keys are the rest of the stream (empty when there are none).
        uint8_t has_rot = CryptoContextImpl<DCRTPoly>::GetAllEvalAutomorphismKeys().count(tag) ? 1 : 0;
        os.write(reinterpret_cast<const char*>(&has_rot), 1);
        if (has_rot)
            need(CryptoContextImpl<DCRTPoly>::SerializeEvalAutomorphismKey(os, SerType::BINARY, tag), "serialising the rotation keys failed");
        os.flush();
        need(os.good() && buf.ok(), "writing the evaluation keys failed");
    });
}

int pf_server_new(const uint8_t* data, size_t len, int32_t bootstrap, uint32_t enc, uint32_t dec, uint32_t slots,
                  PfContext** out, char** err) {
    return guarded(err, [&] {
        need(data && out, "null argument");
        // Sections are read in place (no copy of the large rotation keys).
        size_t at    = 0;
        auto section = [&](const char* what) {
            uint64_t n = 0;
            need(len - at >= sizeof n, (std::string("truncated evaluation keys (") + what + ")").c_str());
            std::memcpy(&n, data + at, sizeof n);
            at += sizeof n;
            need(n <= len - at, (std::string("truncated evaluation keys (") + what + ")").c_str());
            auto r = std::make_pair(reinterpret_cast<const char*>(data + at), static_cast<size_t>(n));
            at += n;
            return r;
        };
        auto tagsec = section("key tag");
        need(tagsec.second < 4096, "these bytes are not OpenFHE evaluation keys (bad header)");
        std::string tag(tagsec.first, tagsec.second);
        auto ccsec = section("context"), multsec = section("relinearisation key");
        need(len - at >= 1, "truncated evaluation keys (rotation keys)");
        bool has_rot = data[at] != 0;
        at += 1;
        MemBuf ccb(ccsec.first, ccsec.second), multb(multsec.first, multsec.second),
            rotb(reinterpret_cast<const char*>(data + at), len - at);
        std::lock_guard<std::mutex> lock(global_lock());
        CryptoContext<DCRTPoly> cc;
        try {
            std::istream s1(&ccb);
            Serial::Deserialize(cc, s1, SerType::BINARY);
        }
        catch (...) {
            reset_parameter_check();
            throw;
        }
        need(cc != nullptr, "the evaluation keys do not start with a crypto context");
        // A deserialised context carries its parameters, not the features enabled on it: a
        // server in a fresh process must enable them again (bootstrapping included) before
        // setting bootstrapping up.
        enable_features(cc, bootstrap != 0);
        // Keys of a tag already present (a client in this process) are the same keys: share them.
        if (!tag_refs().count(tag)) {
            std::istream s2(&multb);
            need(CryptoContextImpl<DCRTPoly>::DeserializeEvalMultKey(s2, SerType::BINARY), "reading the relinearisation key failed");
            need(CryptoContextImpl<DCRTPoly>::GetAllEvalMultKeys().count(tag) == 1,
                 "the relinearisation key does not carry the tag in the header");
            if (has_rot) {
                std::istream s3(&rotb);
                need(CryptoContextImpl<DCRTPoly>::DeserializeEvalAutomorphismKey(s3, SerType::BINARY), "reading the rotation keys failed");
            }
        }
        retain_tag(tag);
        auto* c       = new PfContext();
        c->cc         = cc;
        c->slots      = slots ? slots : cc->GetRingDimension() / 2;
        c->scale_bits = static_cast<uint32_t>(std::llround(std::log2(
            std::dynamic_pointer_cast<CryptoParametersCKKSRNS>(cc->GetCryptoParameters())->GetScalingFactorReal(0))));
        c->bootstrap  = bootstrap != 0;
        c->tag        = tag;
        if (c->bootstrap) {
            try {
                bootstrap_setup_once(cc, enc, dec, c->slots);
            }
            catch (...) {
                release_tag(tag);
                delete c;
                throw;
            }
        }
        *out = c;
    });
}

int pf_save_client(const PfContext* c, PfBytes* out, char** err) {
    return guarded(err, [&] {
        need(c && out, "null argument");
        need(c->keys.secretKey != nullptr && c->keys.publicKey != nullptr, "this context holds no key pair");
        std::ostringstream os, ccs, pk, sk;
        auto section = [&os](const std::string& body) {
            uint64_t n = body.size();
            os.write(reinterpret_cast<const char*>(&n), sizeof n);
            os << body;
        };
        Serial::Serialize(c->cc, ccs, SerType::BINARY);
        Serial::Serialize(c->keys.publicKey, pk, SerType::BINARY);
        Serial::Serialize(c->keys.secretKey, sk, SerType::BINARY);
        section(ccs.str());
        section(pk.str());
        section(sk.str());
        put_bytes(os.str(), out);
    });
}

int pf_load_client(const uint8_t* data, size_t len, PfContext** out, char** err) {
    return guarded(err, [&] {
        need(data && out, "null argument");
        std::string buf(reinterpret_cast<const char*>(data), len);
        std::istringstream is(buf);
        auto section = [&is, len](const char* what) {
            uint64_t n = 0;
            is.read(reinterpret_cast<char*>(&n), sizeof n);
            need(is.good() && n <= len, (std::string("truncated client state (") + what + ")").c_str());
            std::string body(n, '\0');
            if (n)
                is.read(&body[0], static_cast<std::streamsize>(n));
            need(static_cast<uint64_t>(is.gcount()) == n || n == 0, (std::string("truncated client state (") + what + ")").c_str());
            return body;
        };
        std::string ccs = section("context"), pks = section("public key"), sks = section("secret key");
        std::lock_guard<std::mutex> lock(global_lock());
        CryptoContext<DCRTPoly> cc;
        try {
            std::istringstream s1(ccs);
            Serial::Deserialize(cc, s1, SerType::BINARY);
        }
        catch (...) {
            reset_parameter_check();
            throw;
        }
        need(cc != nullptr, "the client state does not start with a crypto context");
        enable_features(cc, false);
        auto* c = new PfContext();
        try {
            std::istringstream s2(pks), s3(sks);
            Serial::Deserialize(c->keys.publicKey, s2, SerType::BINARY);
            Serial::Deserialize(c->keys.secretKey, s3, SerType::BINARY);
            need(c->keys.good(), "the client state holds no key pair");
        }
        catch (...) {
            delete c;
            throw;
        }
        c->cc         = cc;
        c->slots      = cc->GetRingDimension() / 2;
        c->scale_bits = static_cast<uint32_t>(std::llround(std::log2(
            std::dynamic_pointer_cast<CryptoParametersCKKSRNS>(cc->GetCryptoParameters())->GetScalingFactorReal(0))));
        c->tag = c->keys.secretKey->GetKeyTag();
        retain_tag(c->tag);
        *out = c;
    });
}

int pf_server_from_client(const PfContext* c, PfContext** out, char** err) {
    return guarded(err, [&] {
        need(c && out, "null argument");
        need(!c->tag.empty(), "no keys were generated in this context");
        std::lock_guard<std::mutex> lock(global_lock());
        auto* s       = new PfContext();
        s->cc         = c->cc;
        s->slots      = c->slots;
        s->scale_bits = c->scale_bits;
        s->bootstrap  = c->bootstrap;
        s->tag        = c->tag;
        retain_tag(s->tag);
        *out = s;
    });
}

int pf_rotation_indices(const PfContext* c, int32_t* out, size_t cap, size_t* n, char** err) {
    return guarded(err, [&] {
        need(c && n, "null argument");
        const std::string tag = c->keys.secretKey ? c->keys.secretKey->GetKeyTag() : c->tag;
        std::vector<int32_t> steps;
        const uint32_t m = c->cc->GetCyclotomicOrder();
        const auto& all  = CryptoContextImpl<DCRTPoly>::GetAllEvalAutomorphismKeys();
        auto it          = all.find(tag);
        if (it != all.end()) {
            // Map each automorphism index back to a left rotation step: index = 5^step mod m.
            std::map<uint32_t, int32_t> inv;
            uint64_t g = 1;
            for (uint32_t s = 0; s < m / 4; ++s) {
                inv[static_cast<uint32_t>(g)] = static_cast<int32_t>(s);
                g = (g * 5) % m;
            }
            for (auto& kv : *it->second) {
                auto f = inv.find(kv.first);
                if (f != inv.end())
                    steps.push_back(f->second);
            }
        }
        *n = steps.size();
        for (size_t i = 0; i < steps.size() && i < cap; ++i)
            out[i] = steps[i];
    });
}

int pf_encrypt(const PfContext* c, const double* v, size_t n, uint32_t level, double scale, PfCiphertext** out,
               char** err) {
    return guarded(err, [&] {
        need(c && out && (v || !n), "null argument");
        need(c->keys.publicKey != nullptr, "this context holds no public key");
        need(scale > 0 && std::isfinite(scale), "scale must be positive");
        auto pt = encode(c, v, n, scale / internal_scale(c, 1), 1, level);
        *out    = wrap(c->cc->Encrypt(c->keys.publicKey, pt));
    });
}

int pf_decrypt(const PfContext* c, const PfCiphertext* ct, double scale, double* out, size_t cap, size_t* out_len,
               char** err) {
    return guarded(err, [&] {
        need(c && ct && out_len, "null argument");
        need(c->keys.secretKey != nullptr, "this context holds no secret key");
        need(cap >= c->slots, "decrypt buffer too small");
        Plaintext pt;
        auto res = c->cc->Decrypt(c->keys.secretKey, ct->ct, &pt);
        need(res.isValid, "decryption failed");
        pt->SetLength(c->slots);
        auto vals = pt->GetRealPackedValue();
        double f  = internal_scale(c, ct->ct->GetNoiseScaleDeg()) / scale;
        for (size_t i = 0; i < vals.size() && i < cap; ++i)
            out[i] = vals[i] * f;
        *out_len = vals.size();
    });
}

void pf_ct_free(PfCiphertext* ct) {
    try {
        delete ct;
    }
    catch (...) {
    }
}

PfCiphertext* pf_ct_clone(const PfCiphertext* ct) {
    try {
        return ct ? new PfCiphertext{ct->ct->Clone()} : nullptr;
    }
    catch (...) {
        return nullptr;
    }
}

int pf_ct_info(const PfCiphertext* ct, uint32_t* level, uint32_t* deg) {
    if (!ct || !level || !deg)
        return 1;
    *level = towers(ct->ct) - 1;
    *deg   = ct->ct->GetNoiseScaleDeg();
    return 0;
}

int pf_add(const PfContext* c, const PfCiphertext* a, const PfCiphertext* b, PfCiphertext** out, char** err) {
    return guarded(err, [&] {
        check_pair(a->ct, b->ct);
        *out = wrap(c->cc->EvalAdd(a->ct, aligned(a->ct, b->ct)));
    });
}

int pf_sub(const PfContext* c, const PfCiphertext* a, const PfCiphertext* b, PfCiphertext** out, char** err) {
    return guarded(err, [&] {
        check_pair(a->ct, b->ct);
        *out = wrap(c->cc->EvalSub(a->ct, aligned(a->ct, b->ct)));
    });
}

int pf_mul(const PfContext* c, const PfCiphertext* a, const PfCiphertext* b, PfCiphertext** out, char** err) {
    return guarded(err, [&] {
        check_pair(a->ct, b->ct);
        *out = wrap(c->cc->EvalMult(a->ct, b->ct));
    });
}

int pf_square(const PfContext* c, const PfCiphertext* a, PfCiphertext** out, char** err) {
    return guarded(err, [&] { *out = wrap(c->cc->EvalSquare(a->ct)); });
}

int pf_negate(const PfContext* c, const PfCiphertext* a, PfCiphertext** out, char** err) {
    return guarded(err, [&] { *out = wrap(c->cc->EvalNegate(a->ct)); });
}

int pf_add_plain(const PfContext* c, const PfCiphertext* a, const double* v, size_t n, double scale, int32_t subtract,
                 PfCiphertext** out, char** err) {
    return guarded(err, [&] {
        uint32_t deg = a->ct->GetNoiseScaleDeg();
        auto pt      = encode(c, v, n, scale / internal_scale(c, deg), deg, towers(a->ct) - 1);
        *out         = wrap(subtract ? c->cc->EvalSub(a->ct, pt) : c->cc->EvalAdd(a->ct, pt));
    });
}

int pf_mul_plain(const PfContext* c, const PfCiphertext* a, const double* v, size_t n, double pscale,
                 PfCiphertext** out, char** err) {
    return guarded(err, [&] {
        auto pt = encode(c, v, n, pscale / internal_scale(c, 1), 1, towers(a->ct) - 1);
        *out    = wrap(c->cc->EvalMult(a->ct, pt));
    });
}

int pf_add_scalar(const PfContext* c, const PfCiphertext* a, double k, double scale, PfCiphertext** out, char** err) {
    return guarded(err, [&] {
        double f = scale / internal_scale(c, a->ct->GetNoiseScaleDeg());
        *out     = wrap(c->cc->EvalAdd(a->ct, k * f));
    });
}

int pf_mul_scalar(const PfContext* c, const PfCiphertext* a, double k, double kscale, PfCiphertext** out, char** err) {
    return guarded(err, [&] { *out = wrap(c->cc->EvalMult(a->ct, k * kscale / internal_scale(c, 1))); });
}

int pf_mul_integer(const PfContext* c, const PfCiphertext* a, int64_t k, PfCiphertext** out, char** err) {
    return guarded(err, [&] {
        auto x = a->ct->Clone();
        uint64_t mag = k < 0 ? static_cast<uint64_t>(-(k + 1)) + 1 : static_cast<uint64_t>(k);
        c->cc->GetScheme()->MultByIntegerInPlace(x, mag);
        if (k < 0)
            x = c->cc->EvalNegate(x);
        *out = wrap(x);
    });
}

int pf_rescale(const PfContext* c, const PfCiphertext* a, PfCiphertext** out, char** err) {
    return guarded(err, [&] {
        need(towers(a->ct) > 1, "cannot rescale at level 0");
        auto x = a->ct->Clone();
        if (x->GetNoiseScaleDeg() < 2)
            x->SetNoiseScaleDeg(2);
        c->cc->RescaleInPlace(x);
        *out = wrap(x);
    });
}

int pf_drop_to_level(const PfContext* c, const PfCiphertext* a, uint32_t level, PfCiphertext** out, char** err) {
    return guarded(err, [&] {
        uint32_t have = towers(a->ct) - 1;
        need(level <= have, "cannot raise a ciphertext's level");
        if (level == have)
            *out = wrap(a->ct->Clone());
        else
            *out = wrap(c->cc->LevelReduce(a->ct, nullptr, have - level));
    });
}

int pf_rotate(const PfContext* c, const PfCiphertext* a, int32_t step, PfCiphertext** out, char** err) {
    return guarded(err, [&] { *out = wrap(c->cc->EvalRotate(a->ct, step)); });
}

int pf_rotate_many(const PfContext* c, const PfCiphertext* a, const int32_t* steps, size_t n, PfCiphertext** outs,
                   char** err) {
    std::vector<PfCiphertext*> made;
    int rc = guarded(err, [&] {
        auto pre = c->cc->EvalFastRotationPrecompute(a->ct);
        for (size_t i = 0; i < n; ++i)
            made.push_back(steps[i] == 0 ? wrap(a->ct->Clone()) :
                                           wrap(c->cc->EvalFastRotation(a->ct, steps[i], c->cc->GetCyclotomicOrder(), pre)));
    });
    if (rc != 0) {
        for (auto* m : made)
            delete m;
        return rc;
    }
    for (size_t i = 0; i < n; ++i)
        outs[i] = made[i];
    return 0;
}

int pf_bootstrap(const PfContext* c, const PfCiphertext* a, PfCiphertext** out, char** err) {
    return guarded(err, [&] {
        need(c->bootstrap, "this context was built without bootstrapping");
        auto x = a->ct;
        if (x->GetNoiseScaleDeg() != 1) {
            x = x->Clone();
            x->SetNoiseScaleDeg(1);
        }
        auto y = c->cc->EvalBootstrap(x);
        while (y->GetNoiseScaleDeg() > 1)
            c->cc->RescaleInPlace(y);
        *out = wrap(y);
    });
}

int pf_serialize_ct(const PfCiphertext* ct, PfBytes* out, char** err) {
    return guarded(err, [&] {
        std::ostringstream os;
        Serial::Serialize(ct->ct, os, SerType::BINARY);
        put_bytes(os.str(), out);
    });
}

int pf_deserialize_ct(const PfContext* c, const uint8_t* data, size_t len, PfCiphertext** out, char** err) {
    return guarded(err, [&] {
        need(data && out, "null argument");
        std::string buf(reinterpret_cast<const char*>(data), len);
        std::istringstream is(buf);
        Ciphertext<DCRTPoly> ct;
        Serial::Deserialize(ct, is, SerType::BINARY);
        need(ct != nullptr, "not a ciphertext");
        need(ct->GetCryptoContext() == c->cc || *ct->GetCryptoParameters() == *c->cc->GetCryptoParameters(),
             "the ciphertext belongs to other parameters");
        need(towers(ct) >= 1 && towers(ct) <= total_towers(c), "ciphertext has an impossible number of moduli");
        need(ct->GetElements().size() == 2, "ciphertext is not relinearised");
        *out = wrap(ct);
    });
}

}  // extern "C"
