#include "pkv/gguf/gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <set>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"

namespace pkv {

namespace {

using Sink = std::function<void(const void*, size_t)>;

template <typename T>
void put(const Sink& out, T v) {
    out(&v, sizeof(T));
}

void put_string(const Sink& out, const std::string& s) {
    put<uint64_t>(out, s.size());
    out(s.data(), s.size());
}

uint64_t align_up(uint64_t n, uint64_t a) { return n + (a - n % a) % a; }

void put_zeros(const Sink& out, uint64_t n) {
    static const uint8_t zeros[64] = {};
    while (n > 0) {
        const size_t k = static_cast<size_t>(std::min<uint64_t>(n, sizeof(zeros)));
        out(zeros, k);
        n -= k;
    }
}

// Checks that the variant alternative matches the declared type, so that a value
// built by hand with a mismatch is rejected instead of written as garbage.
void check_value(const std::string& key, const GgufValue& v, int depth) {
    const auto bad = [&](const char* what) {
        fail(ErrorCode::invalid_argument, "gguf writer: metadata '{}': {} value does not hold {}", key,
             gguf_type_name(v.type), what);
    };
    switch (v.type) {
        case GgufType::U8:
        case GgufType::U16:
        case GgufType::U32:
        case GgufType::U64:
            if (!std::holds_alternative<uint64_t>(v.value)) bad("an unsigned integer");
            break;
        case GgufType::I8:
        case GgufType::I16:
        case GgufType::I32:
        case GgufType::I64:
            if (!std::holds_alternative<int64_t>(v.value)) bad("a signed integer");
            break;
        case GgufType::F32:
        case GgufType::F64:
            if (!std::holds_alternative<double>(v.value)) bad("a double");
            break;
        case GgufType::BOOL:
            if (!std::holds_alternative<bool>(v.value)) bad("a bool");
            break;
        case GgufType::STRING:
            if (!std::holds_alternative<std::string>(v.value)) bad("a string");
            break;
        case GgufType::ARRAY: {
            if (!std::holds_alternative<std::vector<GgufValue>>(v.value)) bad("a vector");
            PKV_CHECK(depth < 8, invalid_argument, "gguf writer: metadata '{}': arrays nested too deeply", key);
            for (const auto& item : std::get<std::vector<GgufValue>>(v.value)) {
                PKV_CHECK(item.type == v.array_type, invalid_argument,
                          "gguf writer: metadata '{}': array of {} holds a {} element", key,
                          gguf_type_name(v.array_type), gguf_type_name(item.type));
                check_value(key, item, depth + 1);
            }
            break;
        }
        default:
            fail(ErrorCode::invalid_argument, "gguf writer: metadata '{}': unknown value type {}", key,
                 static_cast<uint32_t>(v.type));
    }
}

void put_value(const Sink& out, const GgufValue& v) {
    switch (v.type) {
        case GgufType::U8: put<uint8_t>(out, static_cast<uint8_t>(std::get<uint64_t>(v.value))); break;
        case GgufType::I8: put<int8_t>(out, static_cast<int8_t>(std::get<int64_t>(v.value))); break;
        case GgufType::U16: put<uint16_t>(out, static_cast<uint16_t>(std::get<uint64_t>(v.value))); break;
        case GgufType::I16: put<int16_t>(out, static_cast<int16_t>(std::get<int64_t>(v.value))); break;
        case GgufType::U32: put<uint32_t>(out, static_cast<uint32_t>(std::get<uint64_t>(v.value))); break;
        case GgufType::I32: put<int32_t>(out, static_cast<int32_t>(std::get<int64_t>(v.value))); break;
        case GgufType::U64: put<uint64_t>(out, std::get<uint64_t>(v.value)); break;
        case GgufType::I64: put<int64_t>(out, std::get<int64_t>(v.value)); break;
        case GgufType::F32: put<float>(out, static_cast<float>(std::get<double>(v.value))); break;
        case GgufType::F64: put<double>(out, std::get<double>(v.value)); break;
        case GgufType::BOOL: put<uint8_t>(out, std::get<bool>(v.value) ? 1 : 0); break;
        case GgufType::STRING: put_string(out, std::get<std::string>(v.value)); break;
        case GgufType::ARRAY: {
            const auto& items = std::get<std::vector<GgufValue>>(v.value);
            put<uint32_t>(out, static_cast<uint32_t>(v.array_type));
            put<uint64_t>(out, items.size());
            for (const auto& item : items) put_value(out, item);
            break;
        }
    }
}

GgufValue scalar(GgufType t, uint64_t u) {
    GgufValue v;
    v.type = t;
    v.value = u;
    return v;
}

template <typename T, typename F>
GgufValue array_of(GgufType elem, const std::vector<T>& xs, F make) {
    GgufValue v;
    v.type = GgufType::ARRAY;
    v.array_type = elem;
    std::vector<GgufValue> items;
    items.reserve(xs.size());
    for (const auto& x : xs) items.push_back(make(x));
    v.value = std::move(items);
    return v;
}

void emit(const Sink& out, uint32_t alignment, const std::vector<std::pair<std::string, GgufValue>>& kv,
          const std::vector<std::string>& names, const std::vector<std::vector<uint64_t>>& nes,
          const std::vector<GgmlType>& types, const std::vector<const std::vector<uint8_t>*>& data) {
    uint64_t pos = 0;
    const Sink counted = [&](const void* p, size_t n) {
        out(p, n);
        pos += n;
    };
    counted("GGUF", 4);
    put<uint32_t>(counted, 3);
    put<uint64_t>(counted, names.size());
    put<uint64_t>(counted, kv.size() + (alignment != 32 ? 1 : 0));
    for (const auto& [key, v] : kv) {
        put_string(counted, key);
        put<uint32_t>(counted, static_cast<uint32_t>(v.type));
        put_value(counted, v);
    }
    if (alignment != 32) {
        put_string(counted, "general.alignment");
        put<uint32_t>(counted, static_cast<uint32_t>(GgufType::U32));
        put<uint32_t>(counted, alignment);
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < names.size(); ++i) {
        put_string(counted, names[i]);
        put<uint32_t>(counted, static_cast<uint32_t>(nes[i].size()));
        for (uint64_t e : nes[i]) put<uint64_t>(counted, e);
        put<uint32_t>(counted, static_cast<uint32_t>(types[i]));
        put<uint64_t>(counted, offset);
        offset = align_up(offset + data[i]->size(), alignment);
    }
    put_zeros(counted, align_up(pos, alignment) - pos);
    for (size_t i = 0; i < names.size(); ++i) {
        counted(data[i]->data(), data[i]->size());
        // Padding after the last tensor too, so that the file size is a multiple of the alignment.
        put_zeros(counted, align_up(data[i]->size(), alignment) - data[i]->size());
    }
}

}  // namespace

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
    PKV_CHECK(alignment != 0 && alignment % 8 == 0, invalid_argument,
              "gguf writer: alignment must be a nonzero multiple of 8, got {}", alignment);
}

void GgufWriter::set(const std::string& key, const GgufValue& v) {
    PKV_CHECK(key != "general.alignment", invalid_argument,
              "gguf writer: set 'general.alignment' through the writer's constructor");
    check_value(key, v, 0);
    for (auto& [k, old] : kv_) {
        if (k == key) {
            old = v;
            return;
        }
    }
    kv_.emplace_back(key, v);
}

void GgufWriter::set_u32(const std::string& key, uint32_t v) { set(key, scalar(GgufType::U32, v)); }
void GgufWriter::set_u64(const std::string& key, uint64_t v) { set(key, scalar(GgufType::U64, v)); }

void GgufWriter::set_i32(const std::string& key, int32_t v) {
    GgufValue g;
    g.type = GgufType::I32;
    g.value = int64_t{v};
    set(key, g);
}

void GgufWriter::set_f32(const std::string& key, float v) {
    GgufValue g;
    g.type = GgufType::F32;
    g.value = double{v};
    set(key, g);
}

void GgufWriter::set_f64(const std::string& key, double v) {
    GgufValue g;
    g.type = GgufType::F64;
    g.value = v;
    set(key, g);
}

void GgufWriter::set_bool(const std::string& key, bool v) {
    GgufValue g;
    g.type = GgufType::BOOL;
    g.value = v;
    set(key, g);
}

void GgufWriter::set_string(const std::string& key, const std::string& v) {
    GgufValue g;
    g.type = GgufType::STRING;
    g.value = v;
    set(key, g);
}

void GgufWriter::set_string_array(const std::string& key, const std::vector<std::string>& v) {
    set(key, array_of(GgufType::STRING, v, [](const std::string& s) {
            GgufValue g;
            g.type = GgufType::STRING;
            g.value = s;
            return g;
        }));
}

void GgufWriter::set_i32_array(const std::string& key, const std::vector<int32_t>& v) {
    set(key, array_of(GgufType::I32, v, [](int32_t x) {
            GgufValue g;
            g.type = GgufType::I32;
            g.value = int64_t{x};
            return g;
        }));
}

void GgufWriter::set_f32_array(const std::string& key, const std::vector<float>& v) {
    set(key, array_of(GgufType::F32, v, [](float x) {
            GgufValue g;
            g.type = GgufType::F32;
            g.value = double{x};
            return g;
        }));
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<uint64_t>& ne, GgmlType type,
                            std::vector<uint8_t> data) {
    const uint32_t id = static_cast<uint32_t>(type);
    PKV_CHECK(ne.size() <= 4, invalid_argument, "gguf writer: tensor '{}': expected at most 4 dims, got {}", name,
              ne.size());
    uint64_t block = 0, bytes = 0;
    PKV_CHECK(ggml_type_layout(id, block, bytes), invalid_argument, "gguf writer: tensor '{}': unknown type id {}",
              name, id);
    uint64_t n = 1;
    for (uint64_t e : ne) n = checked_mul(n, e, "gguf writer: tensor '" + name + "'");
    const uint64_t row = ne.empty() ? 1 : ne[0];
    PKV_CHECK(row % block == 0, invalid_argument,
              "gguf writer: tensor '{}': row of {} elements is not a multiple of the {} block size {}", name, row,
              ggml_type_name(id), block);
    const uint64_t expected = (n / block) * bytes;
    PKV_CHECK(data.size() == expected, invalid_argument, "gguf writer: tensor '{}': expected {} bytes of data, got {}",
              name, expected, data.size());
    for (const auto& t : tensors_)
        PKV_CHECK(t.name != name, invalid_argument, "gguf writer: tensor '{}' added twice", name);
    tensors_.push_back(Tensor{name, ne, type, std::move(data)});
}

void GgufWriter::add_tensor_f32(const std::string& name, const std::vector<uint64_t>& ne,
                                const std::vector<float>& data) {
    std::vector<uint8_t> bytes(data.size() * sizeof(float));
    if (!data.empty()) std::memcpy(bytes.data(), data.data(), bytes.size());
    add_tensor(name, ne, GgmlType::F32, std::move(bytes));
}

namespace {

struct Columns {
    std::vector<std::string> names;
    std::vector<std::vector<uint64_t>> nes;
    std::vector<GgmlType> types;
    std::vector<const std::vector<uint8_t>*> data;
};

}  // namespace

std::vector<uint8_t> GgufWriter::encode() const {
    std::vector<uint8_t> bytes;
    Columns c;
    for (const auto& t : tensors_) {
        c.names.push_back(t.name);
        c.nes.push_back(t.ne);
        c.types.push_back(t.type);
        c.data.push_back(&t.data);
    }
    emit(
        [&](const void* p, size_t n) {
            const auto* b = static_cast<const uint8_t*>(p);
            bytes.insert(bytes.end(), b, b + n);
        },
        alignment_, kv_, c.names, c.nes, c.types, c.data);
    return bytes;
}

void GgufWriter::write(const std::string& path, bool force) const {
    AtomicOutput out(path, force);
    std::FILE* f = std::fopen(out.temp_path().c_str(), "wb");
    if (!f) fail(ErrorCode::io, "{}: cannot create: {}", out.temp_path(), std::strerror(errno));
    Columns c;
    for (const auto& t : tensors_) {
        c.names.push_back(t.name);
        c.nes.push_back(t.ne);
        c.types.push_back(t.type);
        c.data.push_back(&t.data);
    }
    bool ok = true;
    try {
        emit(
            [&](const void* p, size_t n) {
                if (ok && n > 0 && std::fwrite(p, 1, n, f) != n) ok = false;
            },
            alignment_, kv_, c.names, c.nes, c.types, c.data);
    } catch (...) {
        std::fclose(f);
        throw;
    }
    const int err = ok ? 0 : errno;
    if (std::fclose(f) != 0 && ok) ok = false;
    if (!ok) fail(ErrorCode::io, "{}: write failed: {}", path, std::strerror(err ? err : errno));
    out.commit();
}

}  // namespace pkv
