// pkv/table/safetensors.cpp — see safetensors.h for the format and the rules.
#include "pkv/table/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

#include "pkv/core/atomic_file.h"
#include "pkv/core/error.h"
#include "pkv/core/memory_budget.h"

namespace pkv {

namespace {

using nlohmann::json;

// The reference reader's limit; a larger header is almost surely corrupt and would
// otherwise make us allocate whatever the first 8 bytes claim.
constexpr uint64_t kMaxHeader = 100'000'000;

std::string shape_str(const std::vector<uint64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// "3 x 8 x F32" (rank 0: "F32"), the way size mismatches are explained.
std::string size_expr(const std::vector<uint64_t>& shape, const std::string& dtype) {
    std::string s;
    for (uint64_t d : shape) s += std::to_string(d) + " x ";
    return s + dtype;
}

uint64_t byte_size(const std::vector<uint64_t>& shape, size_t elem, const std::string& what) {
    uint64_t n = elem;
    for (uint64_t d : shape) n = checked_mul(n, d, what);
    return n;
}

void put_u64le(std::vector<uint8_t>& out, uint64_t v) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

uint64_t get_u64le(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

}  // namespace

uint64_t StTensorView::numel() const {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;  // already overflow-checked when the file was parsed
    return n;
}

StTensor StTensorView::to_tensor() const {
    return StTensor{name, dtype, shape, std::vector<uint8_t>(data, data + size)};
}

size_t st_dtype_size(const std::string& dtype) {
    static const std::map<std::string, size_t> sizes = {
        {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"U16", 2}, {"I16", 2}, {"F16", 2},
        {"BF16", 2}, {"U32", 4}, {"I32", 4}, {"F32", 4},     {"U64", 8},     {"I64", 8}, {"F64", 8},
    };
    auto it = sizes.find(dtype);
    return it == sizes.end() ? 0 : it->second;
}

// ---------------------------------------------------------------------------- writer

void SafetensorsWriter::add(StTensor t) {
    PKV_CHECK(!t.name.empty(), invalid_argument, "safetensors writer: empty tensor name");
    PKV_CHECK(t.name != "__metadata__", invalid_argument, "safetensors writer: tensor name '__metadata__' is reserved");
    PKV_CHECK(!tensors_.count(t.name), invalid_argument, "safetensors writer: tensor '{}': added twice", t.name);
    const size_t elem = st_dtype_size(t.dtype);
    PKV_CHECK(elem != 0, invalid_argument, "safetensors writer: tensor '{}': unknown dtype '{}'", t.name, t.dtype);
    const uint64_t want = byte_size(t.shape, elem, "safetensors writer: tensor '" + t.name + "' size");
    PKV_CHECK(t.data.size() == want, invalid_argument,
              "safetensors writer: tensor '{}': expected {} = {} bytes, got {}", t.name, size_expr(t.shape, t.dtype),
              want, t.data.size());
    std::string name = t.name;
    tensors_.emplace(std::move(name), std::move(t));
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

std::vector<uint8_t> SafetensorsWriter::encode() const {
    json header = json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    uint64_t offset = 0;
    for (const auto& [name, t] : tensors_) {  // std::map: name order
        const uint64_t end = offset + t.data.size();
        header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, end}}};
        offset = end;
    }
    std::string text;
    try {
        text = header.dump();
    } catch (const json::exception& e) {
        // Invalid UTF-8 in a name or metadata string.
        fail(ErrorCode::invalid_argument, "safetensors writer: header cannot be encoded: {}", e.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');

    std::vector<uint8_t> out;
    out.reserve(8 + text.size() + offset);
    put_u64le(out, text.size());
    out.insert(out.end(), text.begin(), text.end());
    for (const auto& [name, t] : tensors_) out.insert(out.end(), t.data.begin(), t.data.end());
    return out;
}

void SafetensorsWriter::write(const std::string& path, bool force) const {
    const std::vector<uint8_t> bytes = encode();
    AtomicOutput out(path, force);
    out.write_and_commit(bytes.data(), bytes.size());
}

// ---------------------------------------------------------------------------- reader

SafetensorsFile SafetensorsFile::open(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    PKV_CHECK(f, not_found, "{}: cannot open: {}", path, std::strerror(errno));
    check_file_fits_budget(path);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    PKV_CHECK(!f.bad(), io, "{}: read failed: {}", path, std::strerror(errno));
    return parse(std::move(bytes), path);
}

namespace {

// Where one tensor's bytes sit in the data buffer; parse sorts these to check the tiling.
struct Span {
    uint64_t begin, end;
    std::string name;
};

// The header's n bytes of JSON text. nlohmann keeps the last of duplicate keys silently,
// so duplicates are caught while parsing: one key set per open object.
json parse_header(const uint8_t* text_bytes, uint64_t n, const std::string& L) {
    std::vector<std::set<std::string>> open_objects;
    std::string duplicate;
    auto on_event = [&](int, json::parse_event_t ev, json& parsed) {
        if (ev == json::parse_event_t::object_start) {
            open_objects.emplace_back();
        } else if (ev == json::parse_event_t::object_end) {
            if (!open_objects.empty()) open_objects.pop_back();
        } else if (ev == json::parse_event_t::key && !open_objects.empty()) {
            const std::string key = parsed.get<std::string>();
            if (!open_objects.back().insert(key).second && duplicate.empty()) duplicate = key;
        }
        return true;
    };
    const char* text = reinterpret_cast<const char*>(text_bytes);
    json header;
    try {
        header = json::parse(text, text + n, on_event);
    } catch (const json::exception& e) {
        fail(ErrorCode::data_loss, "{}: header is not valid JSON: {}", L, e.what());
    }
    PKV_CHECK(duplicate.empty(), data_loss, "{}: header: duplicate key '{}'", L, duplicate);
    PKV_CHECK(header.is_object(), data_loss, "{}: header: expected a JSON object, got {}", L, header.type_name());
    return header;
}

// The "__metadata__" entry: an object whose values are all strings.
void read_metadata(const json& v, const std::string& L, std::map<std::string, std::string>& out) {
    PKV_CHECK(v.is_object(), data_loss, "{}: __metadata__: expected an object, got {}", L, v.type_name());
    for (auto m = v.begin(); m != v.end(); ++m) {
        PKV_CHECK(m.value().is_string(), data_loss, "{}: __metadata__: key '{}': expected a string value, got {}", L,
                  m.key(), m.value().type_name());
        out[m.key()] = m.value().get<std::string>();
    }
}

// One tensor entry, checked field by field and against the data buffer's length; its
// byte range goes to spans. The view's data pointer is set once the bytes have their home.
StTensorView read_tensor_entry(const std::string& name, const json& v, uint64_t buffer_len, const std::string& L,
                               std::vector<Span>& spans) {
    PKV_CHECK(v.is_object(), data_loss, "{}: tensor '{}': expected an object, got {}", L, name, v.type_name());
    PKV_CHECK(v.contains("dtype") && v["dtype"].is_string(), data_loss, "{}: tensor '{}': expected a string 'dtype'", L,
              name);
    PKV_CHECK(v.contains("shape") && v["shape"].is_array(), data_loss, "{}: tensor '{}': expected an array 'shape'", L,
              name);
    PKV_CHECK(v.contains("data_offsets") && v["data_offsets"].is_array() && v["data_offsets"].size() == 2, data_loss,
              "{}: tensor '{}': expected 'data_offsets' as [begin, end]", L, name);
    StTensorView t;
    t.name = name;
    t.dtype = v["dtype"].get<std::string>();
    for (const json& d : v["shape"]) {
        PKV_CHECK(d.is_number_unsigned(), data_loss, "{}: tensor '{}': shape: expected non-negative integers, got {}",
                  L, name, d.dump());
        t.shape.push_back(d.get<uint64_t>());
    }
    const json& off = v["data_offsets"];
    PKV_CHECK(off[0].is_number_unsigned() && off[1].is_number_unsigned(), data_loss,
              "{}: tensor '{}': data_offsets: expected non-negative integers, got {}", L, name, off.dump());
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    const size_t elem = st_dtype_size(t.dtype);
    PKV_CHECK(elem != 0, unsupported, "{}: tensor '{}': unknown dtype '{}'", L, name, t.dtype);
    PKV_CHECK(begin <= end, data_loss, "{}: tensor '{}': data_offsets [{}, {}) end before begin", L, name, begin, end);
    PKV_CHECK(end <= buffer_len, data_loss,
              "{}: tensor '{}': data_offsets [{}, {}) run past the data buffer ({} bytes)", L, name, begin, end,
              buffer_len);
    const uint64_t want = byte_size(t.shape, elem, L + ": tensor '" + name + "' shape " + shape_str(t.shape));
    PKV_CHECK(end - begin == want, data_loss, "{}: tensor '{}': data_offsets [{}, {}) hold {} bytes, expected {} = {}",
              L, name, begin, end, end - begin, size_expr(t.shape, t.dtype), want);
    t.size = static_cast<size_t>(end - begin);
    spans.push_back({begin, end, name});
    return t;
}

// Every byte of the buffer belongs to exactly one tensor (empty tensors own none).
void check_spans_tile(std::vector<Span>& spans, uint64_t buffer_len, const std::string& L) {
    std::sort(spans.begin(), spans.end(),
              [](const Span& a, const Span& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
    uint64_t covered = 0;
    std::string prev;
    for (const Span& s : spans) {
        PKV_CHECK(s.begin >= covered, data_loss,
                  "{}: tensor '{}': data_offsets [{}, {}) overlap tensor '{}' (ends at {})", L, s.name, s.begin, s.end,
                  prev, covered);
        PKV_CHECK(s.begin == covered, data_loss, "{}: tensor '{}': data_offsets [{}, {}) leave a gap [{}, {})", L,
                  s.name, s.begin, s.end, covered, s.begin);
        if (s.end > s.begin) prev = s.name;
        covered = s.end;
    }
    PKV_CHECK(covered == buffer_len, data_loss,
              "{}: tensors cover {} bytes of the data buffer, expected all {} (bytes left over at the end)", L, covered,
              buffer_len);
}

}  // namespace

SafetensorsFile SafetensorsFile::parse(std::vector<uint8_t> bytes, const std::string& label) {
    const std::string& L = label;
    PKV_CHECK(bytes.size() >= 8, data_loss, "{}: expected at least 8 bytes (header length), got {}", L, bytes.size());
    const uint64_t n = get_u64le(bytes.data());
    PKV_CHECK(n <= kMaxHeader, data_loss, "{}: header length {} exceeds the 100 MB limit", L, n);
    PKV_CHECK(n <= bytes.size() - 8, data_loss, "{}: header length {} runs past end of file ({} bytes)", L, n,
              bytes.size());
    const json header = parse_header(bytes.data() + 8, n, L);

    SafetensorsFile file;
    file.label_ = label;
    const uint64_t data_start = 8 + n;
    const uint64_t buffer_len = bytes.size() - data_start;
    std::vector<Span> spans;
    for (auto it = header.begin(); it != header.end(); ++it) {
        if (it.key() == "__metadata__") read_metadata(it.value(), L, file.metadata_);
        else file.tensors_.emplace(it.key(), read_tensor_entry(it.key(), it.value(), buffer_len, L, spans));
    }
    check_spans_tile(spans, buffer_len, L);

    file.bytes_ = std::move(bytes);
    for (auto& entry : file.tensors_) {
        // Not a structured binding: C++17 lambdas cannot capture those (clang refuses).
        const std::string& name = entry.first;
        const Span& s = *std::find_if(spans.begin(), spans.end(), [&](const Span& x) { return x.name == name; });
        entry.second.data = file.bytes_.data() + data_start + s.begin;
    }
    return file;
}

std::vector<std::string> SafetensorsFile::names() const {
    std::vector<std::string> out;
    for (const auto& kv : tensors_) out.push_back(kv.first);
    return out;
}

const StTensorView& SafetensorsFile::tensor(const std::string& name) const {
    auto it = tensors_.find(name);
    PKV_CHECK(it != tensors_.end(), not_found, "{}: no tensor '{}'", label_, name);
    return it->second;
}

}  // namespace pkv
