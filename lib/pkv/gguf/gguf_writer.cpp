#include "pkv/gguf/gguf_writer.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <future>
#include <set>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/half.h"

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

// One tensor as emit() sees it: its bytes in memory, or a row source.
struct TensorView {
    std::string name;
    std::vector<uint64_t> ne;
    GgmlType type;
    const std::vector<uint8_t>* data = nullptr;
    const GgufWriter::RowSource* rows = nullptr;
    uint64_t bytes = 0, row_bytes = 0;
};

// The writer's tensors (a private type, hence the template) as emit() takes them.
template <typename Tensors>
std::vector<TensorView> views_of(const Tensors& tensors) {
    std::vector<TensorView> out;
    for (const auto& t : tensors) {
        TensorView v{t.name, t.ne, t.type};
        if (t.rows) v.rows = &t.rows;
        else v.data = &t.data;
        v.bytes = t.bytes;
        v.row_bytes = t.row_bytes;
        out.push_back(std::move(v));
    }
    return out;
}

constexpr uint64_t kStreamRunBytes = uint64_t{32} << 20;

// Writes a streamed tensor: run i + 1 is made on another thread while run i is written.
void stream_rows(const Sink& out, const TensorView& t) {
    const uint64_t n_rows = t.bytes / t.row_bytes;
    const uint64_t per = std::max<uint64_t>(1, kStreamRunBytes / t.row_bytes);
    std::vector<uint8_t> buf[2];
    const auto fill = [&](int b, uint64_t r0) {
        const uint64_t n = std::min(per, n_rows - r0);
        buf[b].resize(static_cast<size_t>(n * t.row_bytes));
        (*t.rows)(r0, n, buf[b].data());
    };
    if (n_rows == 0) return;
    fill(0, 0);
    // Declared after buf: if out() throws, the future's destructor waits for the run
    // being made before the buffers go away.
    std::future<void> next;
    int b = 0;
    for (uint64_t r0 = 0; r0 < n_rows; r0 += per, b ^= 1) {
        if (r0 + per < n_rows) next = std::async(std::launch::async, fill, b ^ 1, r0 + per);
        out(buf[b].data(), buf[b].size());
        if (next.valid()) next.get();
    }
}

void emit(const Sink& out, uint32_t alignment, const std::vector<std::pair<std::string, GgufValue>>& kv,
          const std::vector<TensorView>& tensors) {
    uint64_t pos = 0;
    const Sink counted = [&](const void* p, size_t n) {
        out(p, n);
        pos += n;
    };
    counted("GGUF", 4);
    put<uint32_t>(counted, 3);
    put<uint64_t>(counted, tensors.size());
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
    for (const TensorView& t : tensors) {
        put_string(counted, t.name);
        put<uint32_t>(counted, static_cast<uint32_t>(t.ne.size()));
        for (uint64_t e : t.ne) put<uint64_t>(counted, e);
        put<uint32_t>(counted, static_cast<uint32_t>(t.type));
        put<uint64_t>(counted, offset);
        offset = align_up(offset + t.bytes, alignment);
    }
    put_zeros(counted, align_up(pos, alignment) - pos);
    for (const TensorView& t : tensors) {
        const uint64_t start = pos;
        if (t.rows != nullptr) stream_rows(counted, t);
        else counted(t.data->data(), t.data->size());
        PKV_CHECK(pos - start == t.bytes, internal, "gguf writer: tensor '{}': wrote {} bytes, expected {}", t.name,
                  pos - start, t.bytes);
        // Padding after the last tensor too, so that the file size is a multiple of the alignment.
        put_zeros(counted, align_up(t.bytes, alignment) - t.bytes);
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

uint64_t GgufWriter::check_tensor(const std::string& name, const std::vector<uint64_t>& ne, GgmlType type) const {
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
    for (const auto& t : tensors_)
        PKV_CHECK(t.name != name, invalid_argument, "gguf writer: tensor '{}' added twice", name);
    return (n / block) * bytes;
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<uint64_t>& ne, GgmlType type,
                            std::vector<uint8_t> data) {
    const uint64_t expected = check_tensor(name, ne, type);
    PKV_CHECK(data.size() == expected, invalid_argument, "gguf writer: tensor '{}': expected {} bytes of data, got {}",
              name, expected, data.size());
    Tensor t;
    t.name = name;
    t.ne = ne;
    t.type = type;
    t.data = std::move(data);
    t.bytes = expected;
    tensors_.push_back(std::move(t));
}

void GgufWriter::add_tensor_streamed(const std::string& name, const std::vector<uint64_t>& ne, GgmlType type,
                                     RowSource rows) {
    PKV_CHECK(rows != nullptr, invalid_argument, "gguf writer: tensor '{}': no row source", name);
    const uint64_t bytes = check_tensor(name, ne, type);
    uint64_t block = 0, block_bytes = 0;
    ggml_type_layout(static_cast<uint32_t>(type), block, block_bytes);
    Tensor t;
    t.name = name;
    t.ne = ne;
    t.type = type;
    t.rows = std::move(rows);
    t.bytes = bytes;
    t.row_bytes = ((ne.empty() ? 1 : ne[0]) / block) * block_bytes;
    PKV_CHECK(t.row_bytes > 0, invalid_argument, "gguf writer: tensor '{}': rows of 0 elements cannot be streamed",
              name);
    tensors_.push_back(std::move(t));
}

namespace {

// Elements of a tensor of shape ne, checked against the floats given for it.
void check_float_count(const std::string& name, const std::vector<uint64_t>& ne, size_t given) {
    uint64_t n = 1;
    for (uint64_t e : ne) n = checked_mul(n, e, "gguf writer: tensor '" + name + "'");
    PKV_CHECK(n == given, invalid_argument, "gguf writer: tensor '{}': expected {} values, got {}", name, n, given);
}

}  // namespace

void GgufWriter::add_tensor_bf16(const std::string& name, const std::vector<uint64_t>& ne,
                                 const std::vector<float>& data) {
    check_float_count(name, ne, data.size());
    std::vector<uint8_t> bytes(data.size() * sizeof(uint16_t));
    if (!data.empty()) float_to_bf16_n(data.data(), reinterpret_cast<uint16_t*>(bytes.data()), data.size());
    add_tensor(name, ne, GgmlType::BF16, std::move(bytes));
}

void GgufWriter::add_tensor_q8_0(const std::string& name, const std::vector<uint64_t>& ne,
                                 const std::vector<float>& data) {
    check_float_count(name, ne, data.size());
    const uint64_t row = ne.empty() ? 1 : ne[0];
    PKV_CHECK(row % QK8_0 == 0, invalid_argument,
              "gguf writer: tensor '{}': row of {} elements is not a multiple of the Q8_0 block size {}", name, row,
              QK8_0);
    std::vector<uint8_t> bytes(data.size() / QK8_0 * sizeof(block_q8_0));
    if (!data.empty())
        quantize_row_q8_0_ref(data.data(), reinterpret_cast<block_q8_0*>(bytes.data()),
                              static_cast<int64_t>(data.size()));
    add_tensor(name, ne, GgmlType::Q8_0, std::move(bytes));
}

void GgufWriter::add_tensor_f32(const std::string& name, const std::vector<uint64_t>& ne,
                                const std::vector<float>& data) {
    std::vector<uint8_t> bytes(data.size() * sizeof(float));
    if (!data.empty()) std::memcpy(bytes.data(), data.data(), bytes.size());
    add_tensor(name, ne, GgmlType::F32, std::move(bytes));
}

std::vector<uint8_t> GgufWriter::encode() const {
    std::vector<uint8_t> bytes;
    emit(
        [&](const void* p, size_t n) {
            const auto* b = static_cast<const uint8_t*>(p);
            bytes.insert(bytes.end(), b, b + n);
        },
        alignment_, kv_, views_of(tensors_));
    return bytes;
}

void GgufWriter::write(const std::string& path, bool force) const {
    AtomicOutput out(path, force);
    std::FILE* f = std::fopen(out.temp_path().c_str(), "wb");
    if (!f) fail(ErrorCode::io, "{}: cannot create: {}", out.temp_path(), std::strerror(errno));
    bool ok = true;
    try {
        emit(
            [&](const void* p, size_t n) {
                if (ok && n > 0 && std::fwrite(p, 1, n, f) != n) ok = false;
            },
            alignment_, kv_, views_of(tensors_));
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
