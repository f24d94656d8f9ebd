// safetensors.h: read and write the safetensors format (the model and optimizer checkpoints).
//
// Format: an 8-byte little-endian header length n, n bytes of JSON header, then the raw tensor
// bytes. The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end)} with
// offsets relative to the start of the data; an optional "__metadata__" maps strings to strings.
// We write F32 only (all master weights and optimizer state are fp32, docs/model.md#precision) and read F32 or
// BF16 (nanochat keeps its embeddings in bf16), upcasting to fp32. The header is padded with spaces
// to a multiple of 8 bytes so the data is aligned, as the reference implementation does.
//
// Writing streams straight to "<path>.tmp" (AtomicFile: every write checked, fsync, rename), so a
// crash or a full disk mid-write never leaves a corrupt checkpoint under the real name, and no
// second copy of the weights is made.
// Reading checks every offset and shape against the file size before touching data: a truncated
// or corrupt file is one clear error naming the file and the tensor.
#pragma once
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "llmc/checksum.h"
#include "llmc/json.h"
#include "llmc/utils.h"

namespace llmc {

struct SafetensorsWriter {
    struct Entry { std::string name; std::vector<int64_t> shape; const float* data; size_t numel; };
    std::vector<Entry> entries;
    std::vector<std::pair<std::string, std::string>> metadata;

    void add(const std::string& name, std::vector<int64_t> shape, const float* data) {
        size_t n = 1;
        for (int64_t d : shape) n *= (size_t)d;
        entries.push_back({name, std::move(shape), data, n});
    }

    // Returns the checksum (checksum.h) of the bytes written, for the checkpoint meta.
    uint64_t write(const std::string& path) const {
        Json header = Json::object();
        if (!metadata.empty()) {
            Json meta = Json::object();
            for (auto& kv : metadata) meta.set(kv.first, kv.second);
            header.set("__metadata__", meta);
        }
        size_t off = 0;
        for (auto& e : entries) {
            Json shape = Json::array();
            for (int64_t d : e.shape) shape.arr.push_back(Json((long long)d));
            Json t = Json::object();
            t.set("dtype", "F32");
            t.set("shape", shape);
            t.set("data_offsets", Json::array({Json((unsigned long long)off), Json((unsigned long long)(off + e.numel * 4))}));
            header.set(e.name, t);
            off += e.numel * 4;
        }
        std::string h = json_dump(header, -1);
        while (h.size() % 8) h.push_back(' ');
        uint64_t hn = h.size();
        unsigned char len[8];
        for (int i = 0; i < 8; i++) len[i] = (unsigned char)(hn >> (8 * i));
        Checksum64 sum;
        AtomicFile f(path);
        f.write(len, 8);
        f.write(h.data(), h.size());
        sum.update(len, 8);
        sum.update(h.data(), h.size());
        for (auto& e : entries) {
            f.write(e.data, e.numel * 4);  // little-endian host (x86, arm64)
            sum.update(e.data, e.numel * 4);
        }
        f.commit();
        return sum.digest();
    }
};

struct SafetensorsFile {
    struct Tensor { std::string dtype; std::vector<int64_t> shape; uint64_t begin = 0, end = 0; };
    std::string path;
    std::string bytes;  // the whole file
    size_t data_start = 0;
    std::map<std::string, Tensor> tensors;
    std::map<std::string, std::string> metadata;

    explicit SafetensorsFile(const std::string& p) : SafetensorsFile(p, read_file(p)) {}
    // From bytes already read (e.g. to check their checksum first); p names them in errors.
    SafetensorsFile(const std::string& p, std::string&& file_bytes) : path(p), bytes(std::move(file_bytes)) {
        LLMC_CHECK(bytes.size() >= 8, "'%s': not a safetensors file: only %zu bytes", p.c_str(), bytes.size());
        uint64_t hn = 0;
        for (int i = 0; i < 8; i++) hn |= (uint64_t)(unsigned char)bytes[i] << (8 * i);
        LLMC_CHECK(hn <= bytes.size() - 8, "'%s': corrupt safetensors header: header length %llu exceeds the file size %zu",
                   p.c_str(), (unsigned long long)hn, bytes.size());
        data_start = 8 + hn;
        Json h = json_parse(bytes.substr(8, hn), p + " (safetensors header)");
        LLMC_CHECK(h.is_object(), "'%s': safetensors header is not a JSON object", p.c_str());
        uint64_t data_size = bytes.size() - data_start;
        for (auto& kv : h.as_object()) {
            if (kv.first == "__metadata__") {
                for (auto& m : kv.second.as_object()) metadata[m.first] = m.second.as_string();
                continue;
            }
            Tensor t;
            try {
                t.dtype = kv.second["dtype"].as_string();
                for (auto& d : kv.second["shape"].as_array()) t.shape.push_back(d.as_int());
                auto& o = kv.second["data_offsets"].as_array();
                LLMC_CHECK(o.size() == 2, "data_offsets must have two entries");
                t.begin = (uint64_t)o[0].as_int();
                t.end = (uint64_t)o[1].as_int();
            } catch (const Error& e) {
                LLMC_FAIL("'%s': tensor '%s': %s", p.c_str(), kv.first.c_str(), e.what());
            }
            size_t esize = t.dtype == "F32" ? 4 : (t.dtype == "BF16" || t.dtype == "F16") ? 2 : 0;
            LLMC_CHECK(esize, "'%s': tensor '%s' has dtype %s (supported: F32, BF16, F16)", p.c_str(), kv.first.c_str(), t.dtype.c_str());
            uint64_t n = 1;
            for (int64_t d : t.shape) {
                LLMC_CHECK(d >= 0, "'%s': tensor '%s' has a negative dimension", p.c_str(), kv.first.c_str());
                n *= (uint64_t)d;
            }
            LLMC_CHECK(t.begin <= t.end && t.end <= data_size, "'%s': tensor '%s': data offsets [%llu, %llu) outside the %llu data bytes (truncated file?)",
                       p.c_str(), kv.first.c_str(), (unsigned long long)t.begin, (unsigned long long)t.end, (unsigned long long)data_size);
            LLMC_CHECK(t.end - t.begin == n * esize, "'%s': tensor '%s': %llu bytes do not match its shape (%llu elements of %s)",
                       p.c_str(), kv.first.c_str(), (unsigned long long)(t.end - t.begin), (unsigned long long)n, t.dtype.c_str());
            tensors[kv.first] = t;
        }
    }

    bool has(const std::string& name) const { return tensors.count(name) > 0; }

    static std::string shape_str(const std::vector<int64_t>& s) {
        std::string r = "(";
        for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
        return r + ")";
    }

    // Copy tensor `name` into dst as fp32, checking its shape.
    void read(const std::string& name, const std::vector<int64_t>& shape, float* dst) const {
        auto it = tensors.find(name);
        LLMC_CHECK(it != tensors.end(), "'%s': missing tensor '%s'", path.c_str(), name.c_str());
        const Tensor& t = it->second;
        LLMC_CHECK(t.shape == shape, "'%s': tensor '%s' has shape %s, expected %s", path.c_str(), name.c_str(),
                   shape_str(t.shape).c_str(), shape_str(shape).c_str());
        const unsigned char* src = (const unsigned char*)bytes.data() + data_start + t.begin;
        size_t n = 1;
        for (int64_t d : shape) n *= (size_t)d;
        if (t.dtype == "F32") { memcpy(dst, src, n * 4); return; }
        for (size_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));
            dst[i] = t.dtype == "BF16" ? bf16_to_f32(h) : f16_to_f32(h);
        }
    }

    static float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
    static float f16_to_f32(uint16_t h) {
        uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023, u;
        if (exp == 31) u = sign | 0x7F800000u | (man << 13);                    // inf / nan
        else if (exp) u = sign | ((exp + 112) << 23) | (man << 13);            // normal
        else if (!man) u = sign;                                               // zero
        else {                                                                 // subnormal: normalize
            int e = 113;
            while (!(man & 1024)) { man <<= 1; e--; }
            u = sign | ((uint32_t)e << 23) | ((man & 1023) << 13);
        }
        float f; memcpy(&f, &u, 4); return f;
    }
};

}  // namespace llmc
