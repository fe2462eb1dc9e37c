// HDF5 virtual datasets: what a joined KV dump's activations are (h5.h).
#include <algorithm>

#include "pkv/kvdump/h5.h"

namespace pkv::h5 {

namespace {
/// The one block a dataspace selects: "all" is the whole extent; a hyperslab selection
/// must be exactly one block. False otherwise.
bool single_block(hid_t space, std::vector<uint64_t>* start, std::vector<uint64_t>* count) {
    const int rank = H5Sget_simple_extent_ndims(space);
    if (rank <= 0 || rank > H5S_MAX_RANK) return false;
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    H5Sget_simple_extent_dims(space, dims.data(), nullptr);
    const H5S_sel_type type = H5Sget_select_type(space);
    if (type == H5S_SEL_ALL) {
        start->assign(static_cast<size_t>(rank), 0);
        count->assign(dims.begin(), dims.end());
        return true;
    }
    if (type != H5S_SEL_HYPERSLABS || H5Sget_select_hyper_nblocks(space) != 1) return false;
    std::vector<hsize_t> corners(2 * static_cast<size_t>(rank));
    if (H5Sget_select_hyper_blocklist(space, 0, 1, corners.data()) < 0) return false;
    start->resize(static_cast<size_t>(rank));
    count->resize(static_cast<size_t>(rank));
    for (size_t i = 0; i < static_cast<size_t>(rank); ++i) {
        const hsize_t a = corners[i], b = corners[static_cast<size_t>(rank) + i];
        if (b < a || b >= dims[i]) return false;
        (*start)[i] = a;
        (*count)[i] = b - a + 1;
    }
    return true;
}

std::string virtual_name(const std::string& where, size_t i, ssize_t (*get)(hid_t, size_t, char*, size_t), hid_t dcpl) {
    const ssize_t n = get(dcpl, i, nullptr, 0);
    PKV_CHECK(n >= 1 && n <= 4096, data_loss, "{}: mapping {}: expected a name of 1 to 4096 bytes, got {}", where, i,
              n);
    std::string s(static_cast<size_t>(n) + 1, '\0');
    if (get(dcpl, i, s.data(), s.size()) != n) fail_h5(ErrorCode::data_loss, where, "cannot read a mapping's name");
    s.resize(static_cast<size_t>(n));
    return s;
}
}  // namespace

std::vector<VirtualMapping> virtual_mappings(const File& f, hid_t dset, const std::string& name) {
    silence_errors();
    const std::string where = f.where(name);
    Id dcpl(H5Dget_create_plist(dset));
    size_t n = 0;
    if (!dcpl || H5Pget_virtual_count(dcpl.get(), &n) < 0)
        fail_h5(ErrorCode::data_loss, where, "cannot read the virtual dataset's mappings");
    PKV_CHECK(n >= 1 && n <= kMaxVirtualMappings, data_loss, "{}: expected 1 to {} mappings, got {}", where,
              kMaxVirtualMappings, n);
    const std::vector<uint64_t> shape = shape_of(f, dset, name);
    std::vector<VirtualMapping> out(n);
    for (size_t i = 0; i < n; ++i) {
        VirtualMapping& m = out[i];
        m.file = virtual_name(where, i, H5Pget_virtual_filename, dcpl.get());
        m.dataset = virtual_name(where, i, H5Pget_virtual_dsetname, dcpl.get());
        Id vspace(H5Pget_virtual_vspace(dcpl.get(), i)), sspace(H5Pget_virtual_srcspace(dcpl.get(), i));
        if (!vspace || !sspace) fail_h5(ErrorCode::data_loss, where, "cannot read mapping " + std::to_string(i));
        // HDF5 stores an "all" source selection without its extent (the source has it):
        // then the source must have the block's extent, which readers check when they open it.
        std::vector<uint64_t> s_start, s_count;
        const bool src_all = H5Sget_select_type(sspace.get()) == H5S_SEL_ALL;
        const bool ok = single_block(vspace.get(), &m.start, &m.count) && m.start.size() == shape.size() &&
                        (src_all || (single_block(sspace.get(), &s_start, &s_count) && s_count == m.count &&
                                     std::all_of(s_start.begin(), s_start.end(), [](uint64_t x) { return x == 0; })));
        PKV_CHECK(ok, data_loss,
                  "{}: mapping {} ('{}' in '{}'): expected one block of the dataset mapped from a whole source "
                  "dataset",
                  where, i, m.dataset, m.file);
    }
    return out;
}

Id create_virtual(const File& f, const std::string& name, hid_t file_type, const std::vector<uint64_t>& shape,
                  const std::vector<VirtualMapping>& mappings, const void* fill) {
    silence_errors();
    const std::string where = f.where(name);
    const std::vector<hsize_t> dims(shape.begin(), shape.end());
    const int rank = static_cast<int>(dims.size());
    Id space(H5Screate_simple(rank, dims.data(), nullptr));
    Id dcpl(H5Pcreate(H5P_DATASET_CREATE));
    if (!space || !dcpl || H5Pset_fill_value(dcpl.get(), file_type, fill) < 0)
        fail_h5(ErrorCode::io, where, "cannot set up a virtual dataset");
    for (const VirtualMapping& m : mappings) {
        const std::vector<hsize_t> start(m.start.begin(), m.start.end()), count(m.count.begin(), m.count.end());
        Id vspace(H5Screate_simple(rank, dims.data(), nullptr));
        Id sspace(H5Screate_simple(rank, count.data(), nullptr));
        if (!vspace || !sspace ||
            H5Sselect_hyperslab(vspace.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr) < 0 ||
            H5Pset_virtual(dcpl.get(), vspace.get(), m.file.c_str(), m.dataset.c_str(), sspace.get()) < 0)
            fail_h5(ErrorCode::io, where, "cannot map '" + m.dataset + "' of '" + m.file + "'");
    }
    Id d(H5Dcreate2(f.id(), name.c_str(), file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
    if (!d) fail_h5(ErrorCode::io, where, "cannot create virtual dataset");
    return d;
}

}  // namespace pkv::h5
