// CudaBackend<T>: the GPU backend over cuBLAS and cuSOLVER, row-major storage, float or double.
//
// Same contract as EigenBackend (milora/core/backend.hpp), so every adapter, init policy, spectral
// solver and AdamW runs on the GPU unchanged. The pieces:
//   memory    cuda/memory.hpp: DeviceMatrix (cudaMalloc, RAII), DeviceView (pointer, shape, row stride)
//   context   cuda/context.hpp: a stream + cuBLAS + cuSOLVER handles per thread
//   BLAS      cuBLAS on the transposed reading of row-major memory (no copies, see gemm)
//   LAPACK    cuSOLVER: gesvd, syevdx (index range), geqrf + orgqr, potrf; these need column-major
//             input of a particular orientation, so svd / qr transpose once with cublas<t>geam
//   kernels   cuda/kernels.hpp (declared here, defined in kernels.cuh for nvcc): element-wise work,
//             the random fills (the same numbers as the CPU backends), AdamW
// A program compiles milora/backend/cuda/kernels.cu once (CMake: link milora::cuda).
//
// Everything is queued on the calling thread's stream; to_host and the scalar results
// (all_finite, squared_norm) synchronise it, so errors of earlier asynchronous work surface there
// as device_error. Without a CUDA device, the first call throws device_error saying so.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "milora/backend/cuda/context.hpp"
#include "milora/backend/cuda/cublas_cusolver.hpp"
#include "milora/backend/cuda/kernels.hpp"
#include "milora/backend/cuda/memory.hpp"
#include "milora/core/backend.hpp"
#include "milora/core/bf16.hpp"
#include "milora/core/weight_storage.hpp"

namespace milora {

template <class T>
struct CudaBackend {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "CudaBackend supports float and double");

  using scalar = T;
  /// The same backend in another precision (the fast minor solver forms its Gram matrix in double).
  template <class U>
  using rebind = CudaBackend<U>;
  using matrix = cuda::DeviceMatrix<T>;
  using view = cuda::DeviceView<T>;
  using const_view = cuda::DeviceView<const T>;

  // ---- memory ----------------------------------------------------------------------------------
  static matrix zeros(Index rows, Index cols) {
    if (rows < 0 || cols < 0) throw shape_error(detail::concat("zeros: ", detail::shape_str(rows, cols)));
    matrix m(rows, cols);
    if (m.size() > 0)
      cuda::check(cudaMemsetAsync(m.data(), 0, std::size_t(m.size()) * sizeof(T), stream()), "cudaMemsetAsync (zeros)");
    return m;
  }
  static matrix from_host(Index rows, Index cols, std::span<const T> data) {
    if (rows < 0 || cols < 0 || static_cast<Index>(data.size()) != rows * cols)
      throw shape_error(detail::concat("from_host: ", data.size(), " values for a ", detail::shape_str(rows, cols),
                                       " matrix"));
    matrix m(rows, cols);
    if (m.size() > 0) {
      cuda::check(cudaMemcpyAsync(m.data(), data.data(), data.size_bytes(), cudaMemcpyHostToDevice, stream()),
                  "cudaMemcpyAsync (from_host)");
      cuda::context().synchronize("cudaStreamSynchronize (from_host)");  // the caller may free data now
    }
    return m;
  }
  static std::vector<T> to_host(const_view m) {
    std::vector<T> out(static_cast<std::size_t>(m.size()));
    if (out.empty()) return out;
    cuda::check(cudaMemcpy2DAsync(out.data(), std::size_t(m.cols()) * sizeof(T), m.data(), std::size_t(m.ld()) * sizeof(T),
                                  std::size_t(m.cols()) * sizeof(T), std::size_t(m.rows()), cudaMemcpyDeviceToHost,
                                  stream()),
                "cudaMemcpy2DAsync (to_host)");
    cuda::context().synchronize("cudaStreamSynchronize (to_host)");
    return out;
  }
  static matrix clone(const_view m) {
    matrix c(m.rows(), m.cols());
    copy(m, c);
    return c;
  }
  /// A copy in scalar U (milora::convert uses it to move between float and double).
  template <class U>
  static typename CudaBackend<U>::matrix cast(const_view m) {
    typename CudaBackend<U>::matrix c(m.rows(), m.cols());
    cuda::kernels::convert<T, U>(m, c, stream());
    return c;
  }
  static void copy(const_view src, view dst) {
    same_shape(src, dst, "copy");
    if (src.size() == 0) return;
    cuda::check(cudaMemcpy2DAsync(dst.data(), std::size_t(dst.ld()) * sizeof(T), src.data(), std::size_t(src.ld()) * sizeof(T),
                                  std::size_t(src.cols()) * sizeof(T), std::size_t(src.rows()), cudaMemcpyDeviceToDevice,
                                  stream()),
                "cudaMemcpy2DAsync (copy)");
  }
  static Index rows(const_view m) { return m.rows(); }
  static Index cols(const_view m) { return m.cols(); }
  static view block(view m, Index r0, Index c0, Index nr, Index nc) { return sub(m, r0, c0, nr, nc); }
  static const_view cblock(const_view m, Index r0, Index c0, Index nr, Index nc) { return sub(m, r0, c0, nr, nc); }

  // ---- BLAS ------------------------------------------------------------------------------------
  // Row-major X (r x c, stride ld) is column-major X^T to cuBLAS. So C = op(A) op(B) is computed as
  // C^T = op(B)^T op(A)^T: the operands swap places and keep their transpose flags.
  static void gemm(T alpha, const_view a, Trans ta, const_view b, Trans tb, T beta, view c) {
    const Index m = c.rows(), n = c.cols();
    const Index k = ta == Trans::yes ? a.rows() : a.cols();
    const Index am = ta == Trans::yes ? a.cols() : a.rows();
    const Index bk = tb == Trans::yes ? b.cols() : b.rows(), bn = tb == Trans::yes ? b.rows() : b.cols();
    if (am != m || bk != k || bn != n)
      throw shape_error(detail::concat("gemm: op(A) ", detail::shape_str(am, k), " times op(B) ", detail::shape_str(bk, bn),
                                       " into C ", detail::shape_str(m, n)));
    if (m == 0 || n == 0) return;
    if (k == 0) {  // the answer is beta * C; some BLAS reject k = 0
      scale(c, beta);
      return;
    }
    cuda::lib::gemm(blas(), op(tb), op(ta), cuda::to_int(n, "gemm n"), cuda::to_int(m, "gemm m"),
                    cuda::to_int(k, "gemm k"), alpha, b.data(), ld(b), a.data(), ld(a), beta, c.data(), ld(c));
  }

  // C = alpha op(A) op(A)^T + beta C. The column-major reading of A's memory is A^T, so
  // op(A) op(A)^T is (A^T)^T A^T (trans = T) for ta = no and A^T (A^T)^T (trans = N) for ta = yes.
  // cuBLAS writes its lower triangle, which is C's upper one in row-major; a kernel mirrors it.
  static void syrk(T alpha, const_view a, Trans ta, T beta, view c) {
    const Index n = c.rows(), k = ta == Trans::yes ? a.rows() : a.cols();
    const Index an = ta == Trans::yes ? a.cols() : a.rows();
    if (c.cols() != n || an != n)
      throw shape_error(detail::concat("syrk: op(A) is ", detail::shape_str(an, k), ", C is ",
                                       detail::shape_str(c.rows(), c.cols())));
    if (n == 0) return;
    if (k == 0) {
      scale(c, beta);
      return;
    }
    cuda::lib::syrk(blas(), CUBLAS_FILL_MODE_LOWER, ta == Trans::yes ? CUBLAS_OP_N : CUBLAS_OP_T,
                    cuda::to_int(n, "syrk n"), cuda::to_int(k, "syrk k"), alpha, a.data(), ld(a), beta, c.data(), ld(c));
    cuda::kernels::mirror_upper_to_lower<T>(c, stream());
  }

  // X = op(L)^-1 X. Transposed: X^T = X^T op(L)^-T, a right-side solve with the column-major
  // reading of L's memory, which is L^T (upper): op = N for op(L) = L, T for op(L) = L^T.
  static void trsm(const_view l, Trans tl, view x) {
    if (l.rows() != l.cols() || l.rows() != x.rows())
      throw shape_error(detail::concat("trsm: triangular factor ", detail::shape_str(l.rows(), l.cols()),
                                       " for a right-hand side ", detail::shape_str(x.rows(), x.cols())));
    if (x.size() == 0) return;
    cuda::lib::trsm(blas(), CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER, tl == Trans::yes ? CUBLAS_OP_T : CUBLAS_OP_N,
                    cuda::to_int(x.cols(), "trsm columns"), cuda::to_int(x.rows(), "trsm rows"), T(1), l.data(), ld(l),
                    x.data(), ld(x));
  }

  // ---- element-wise ----------------------------------------------------------------------------
  static void scale(view m, T a) { cuda::kernels::scale<T>(m, a, stream()); }
  static void axpy(T a, const_view x, view y) {
    same_shape(x, y, "axpy");
    cuda::kernels::axpy<T>(a, x, y, stream());
  }
  static void add_diagonal(view m, T a) { cuda::kernels::add_diagonal<T>(m, a, stream()); }
  static void add_row_broadcast(view m, const_view row) {
    require_vector(row, m.cols(), "add_row_broadcast: row");
    cuda::kernels::add_row_broadcast<T>(m, row.data(), vector_stride(row), stream());
  }
  static void scale_rows(view m, const_view d) {
    require_vector(d, m.rows(), "scale_rows: d");
    cuda::kernels::scale_rows<T>(m, d.data(), vector_stride(d), stream());
  }
  static void scale_columns(view m, const_view d) {
    require_vector(d, m.cols(), "scale_columns: d");
    cuda::kernels::scale_columns<T>(m, d.data(), vector_stride(d), stream());
  }
  static bool all_finite(const_view m) {
    if (m.size() == 0) return true;
    cuda::DeviceBuffer<int> flag(1);
    cuda::check(cudaMemsetAsync(flag.data(), 0, sizeof(int), stream()), "cudaMemsetAsync (all_finite)");
    cuda::kernels::find_nonfinite<T>(m, flag.data(), stream());
    int host = 0;
    cuda::check(cudaMemcpyAsync(&host, flag.data(), sizeof(int), cudaMemcpyDeviceToHost, stream()),
                "cudaMemcpyAsync (all_finite)");
    cuda::context().synchronize("cudaStreamSynchronize (all_finite)");
    return host == 0;
  }
  static double squared_norm(const_view m) {
    if (m.size() == 0) return 0.0;
    constexpr int blocks = cuda::kernels::squared_norm_blocks;
    cuda::DeviceBuffer<double> partials(blocks);
    cuda::kernels::squared_norm_partials<T>(m, partials.data(), stream());
    std::vector<double> host(blocks);
    cuda::check(cudaMemcpyAsync(host.data(), partials.data(), blocks * sizeof(double), cudaMemcpyDeviceToHost, stream()),
                "cudaMemcpyAsync (squared_norm)");
    cuda::context().synchronize("cudaStreamSynchronize (squared_norm)");
    double sum = 0;
    for (const double p : host) sum += p;  // fixed order: the same result every run
    return sum;
  }
  static void adamw_update(view p, const_view g, view m, view v, const AdamWStep& s) {
    same_shape(p, g, "adamw_update: gradient");
    same_shape(p, m, "adamw_update: first moment");
    same_shape(p, v, "adamw_update: second moment");
    cuda::kernels::adamw<T>(p, g, m, v, s, stream());
  }

  // ---- random ----------------------------------------------------------------------------------
  static void fill_uniform(view m, double lo, double hi, std::uint64_t seed) {
    cuda::kernels::fill_uniform<T>(m, lo, hi, seed, stream());
  }
  static void fill_normal(view m, double mean, double stddev, std::uint64_t seed) {
    cuda::kernels::fill_normal<T>(m, mean, stddev, seed, stream());
  }

  // ---- bf16 storage (Bf16Backend, milora/core/backend.hpp) --------------------------------------
  // Stored as milora::bf16 (16 bits, __nv_bfloat16's layout). In float, products are one
  // cublasGemmEx on bf16 tensor cores with float accumulation, after a kernel rounds x to bf16 (a
  // tokens x in scratch of 2 bytes per value); CudaBackend<double> widens both operands to double
  // instead (the reference precision for tests, not a fast path).
  using bf16_matrix = cuda::DeviceMatrix<bf16>;
  using bf16_view = cuda::DeviceView<bf16>;
  using bf16_const_view = cuda::DeviceView<const bf16>;

  static bf16_matrix bf16_from_host(Index rows, Index cols, std::span<const std::uint16_t> bits) {
    if (rows < 0 || cols < 0 || static_cast<Index>(bits.size()) != rows * cols)
      throw shape_error(detail::concat("bf16_from_host: ", bits.size(), " values for a ", detail::shape_str(rows, cols),
                                       " matrix"));
    bf16_matrix m(rows, cols);
    if (m.size() > 0) {
      cuda::check(cudaMemcpyAsync(m.data(), bits.data(), bits.size_bytes(), cudaMemcpyHostToDevice, stream()),
                  "cudaMemcpyAsync (bf16_from_host)");
      cuda::context().synchronize("cudaStreamSynchronize (bf16_from_host)");
    }
    return m;
  }
  static std::vector<std::uint16_t> bf16_to_host(bf16_const_view m) {
    std::vector<std::uint16_t> out(static_cast<std::size_t>(m.size()));
    if (out.empty()) return out;
    cuda::check(cudaMemcpy2DAsync(out.data(), std::size_t(m.cols()) * 2, m.data(), std::size_t(m.ld()) * 2,
                                  std::size_t(m.cols()) * 2, std::size_t(m.rows()), cudaMemcpyDeviceToHost, stream()),
                "cudaMemcpy2DAsync (bf16_to_host)");
    cuda::context().synchronize("cudaStreamSynchronize (bf16_to_host)");
    return out;
  }
  static Index bf16_rows(bf16_const_view m) { return m.rows(); }
  static Index bf16_cols(bf16_const_view m) { return m.cols(); }
  static bf16_view bf16_block(bf16_view m, Index r0, Index c0, Index nr, Index nc) { return sub(m, r0, c0, nr, nc); }
  static bf16_const_view bf16_cblock(bf16_const_view m, Index r0, Index c0, Index nr, Index nc) {
    return sub(m, r0, c0, nr, nc);
  }
  static bf16_matrix to_bf16(const_view m) {
    bf16_matrix out(m.rows(), m.cols());
    cuda::kernels::round_to_bf16<T>(m, out, stream());
    return out;
  }
  static matrix from_bf16(bf16_const_view w) {
    matrix out(w.rows(), w.cols());
    cuda::kernels::widen_bf16<T>(w, out, stream());
    return out;
  }
  /// dst = round(src) and dst = widen(src) into existing storage of the same shape (no allocation:
  /// what a model that keeps its activations in bf16 does every layer).
  static void round_into_bf16(const_view src, bf16_view dst) {
    detail::require_same_shape(src.rows(), src.cols(), dst.rows(), dst.cols(), "round_into_bf16");
    cuda::kernels::round_to_bf16<T>(src, dst, stream());
  }
  static void from_bf16_into(bf16_const_view src, view dst) {
    detail::require_same_shape(src.rows(), src.cols(), dst.rows(), dst.cols(), "from_bf16_into");
    cuda::kernels::widen_bf16<T>(src, dst, stream());
  }

  /// c = alpha op(round(x)) op(w) + beta c, accumulated in T.
  static void gemm_bf16(T alpha, const_view x, Trans tx, bf16_const_view w, Trans tw, T beta, view c) {
    const Index m = c.rows(), n = c.cols();
    const Index k = tx == Trans::yes ? x.rows() : x.cols(), xm = tx == Trans::yes ? x.cols() : x.rows();
    const Index wk = tw == Trans::yes ? w.cols() : w.rows(), wn = tw == Trans::yes ? w.rows() : w.cols();
    if (xm != m || wk != k || wn != n)
      throw shape_error(detail::concat("gemm_bf16: op(X) ", detail::shape_str(xm, k), " times op(W) ",
                                       detail::shape_str(wk, wn), " into C ", detail::shape_str(m, n)));
    if (m == 0 || n == 0) return;
    if (k == 0) {
      scale(c, beta);
      return;
    }
    const bf16_matrix xb = to_bf16(x);
    if constexpr (std::is_same_v<T, float>) {
      // Row-major C = op(X) op(W) is column-major C^T = op(W)^T op(X)^T, as in gemm.
      cuda::lib::gemm_bf16(blas(), op(tw), op(tx), cuda::to_int(n, "gemm_bf16 n"), cuda::to_int(m, "gemm_bf16 m"),
                           cuda::to_int(k, "gemm_bf16 k"), alpha, w.data(), bf16_ld(w), xb.data(),
                           bf16_ld(bf16_const_view(xb)), beta, c.data(), ld(c));
    } else {
      gemm(alpha, from_bf16(xb), tx, from_bf16(w), tw, beta, c);
    }
  }

  /// w = round(w + alpha b a): widened to T, one gemm, rounded back (a temporary of W's size in T).
  static void add_product_to_bf16(T alpha, const_view b, const_view a, bf16_view w) {
    if (b.rows() != w.rows() || a.cols() != w.cols() || b.cols() != a.rows())
      throw shape_error(detail::concat("add_product_to_bf16: ", detail::shape_str(b.rows(), b.cols()), " times ",
                                       detail::shape_str(a.rows(), a.cols()), " into a bf16 ",
                                       detail::shape_str(w.rows(), w.cols())));
    matrix wide = from_bf16(w);
    gemm(alpha, b, Trans::no, a, Trans::no, T(1), wide);
    cuda::kernels::round_to_bf16<T>(wide, w, stream());
  }

  // ---- LAPACK (cuSOLVER) -----------------------------------------------------------------------
  // gesvd needs a column-major matrix with rows >= cols. A (m x n row-major) is column-major A^T
  // (n x m): when n >= m, A^T = U1 S V1^T gives A = V1 S U1^T, and gesvd writes V1^T straight into
  // U's row-major memory and U1 into Vt's. When m > n, A is transposed once into column-major and
  // the factors are transposed back.
  static SVDResult<matrix> svd(const_view a) {
    const Index m = a.rows(), n = a.cols(), k = std::min(m, n);
    SVDResult<matrix> r{matrix(m, k), matrix(1, k), matrix(k, n)};
    if (k == 0) return r;
    const int im = cuda::to_int(m, "svd rows"), in = cuda::to_int(n, "svd cols"), ik = int(k);
    cuda::DeviceBuffer<int> info(1);
    cuda::DeviceBuffer<T> rwork(static_cast<std::size_t>(std::max<Index>(k - 1, 1)));  // unconverged superdiagonal
    if (n >= m) {
      matrix work = clone(a);  // gesvd destroys its input; work is A^T column-major, n x m, ld n
      cuda::DeviceBuffer<T> ws(std::size_t(cuda::lib::gesvd_lwork(solver(), in, im, T{})));
      cuda::lib::gesvd(solver(), in, im, work.data(), in, r.S.data(), r.Vt.data(), in, r.U.data(), ik, ws.data(),
                       int(ws.size()), rwork.data(), info.data());
      check_info(info, "svd (cusolverDn<t>gesvd)");
    } else {
      matrix colmajor(n, m);  // A column-major: m x n, ld m
      cuda::lib::transpose(blas(), im, in, a.data(), ld(a), colmajor.data(), im);
      matrix u(k, m), vt(n, k);  // column-major U (m x k, ld m) and Vt (k x n, ld k)
      cuda::DeviceBuffer<T> ws(std::size_t(cuda::lib::gesvd_lwork(solver(), im, in, T{})));
      cuda::lib::gesvd(solver(), im, in, colmajor.data(), im, r.S.data(), u.data(), im, vt.data(), ik, ws.data(),
                       int(ws.size()), rwork.data(), info.data());
      check_info(info, "svd (cusolverDn<t>gesvd)");
      cuda::lib::transpose(blas(), ik, im, u.data(), im, r.U.data(), ik);    // row-major m x k
      cuda::lib::transpose(blas(), in, ik, vt.data(), ik, r.Vt.data(), in);  // row-major k x n
    }
    return r;
  }

  /// The r largest singular triplets by cuSOLVER's randomized SVD (cusolverDnXgesvdr: a sketch of
  /// r + p columns, p capped at min(m, n) - r, and niters power iterations; Halko, Martinsson &
  /// Tropp), sigma descending. Used by CusolverRandomizedSVD (milora/spectral/cusolver_randomized.hpp).
  /// cuSOLVER draws its own sketch, so the triplets are not those of RandomizedSVD with milora's
  /// generator, only as accurate.
  // Row-major A (m x n) is column-major A^T (n x m); A^T = U1 S V1^T gives A = V1 S U1^T. U1's
  // column-major memory (n x r, ld n) read row-major is U1^T = Vt; V1 (m x r, ld m) is transposed
  // into U. The output buffers are sized for the whole sketch (r + p columns), more than the r that
  // cuSOLVER documents, so that no reading of its documentation can make it write out of bounds.
  static SVDResult<matrix> svd_randomized_top(const_view a, Index r, Index p, Index niters) {
    const Index m = a.rows(), n = a.cols(), k = std::min(m, n);
    if (r < 1 || r > k || p < 0 || niters < 0)
      throw value_error(detail::concat("svd_randomized_top: rank ", r, ", oversampling ", p, ", power iterations ", niters,
                                       " for a ", detail::shape_str(m, n), " matrix (need 1 <= rank <= ", k, ", >= 0, >= 0)"));
    const Index over = std::min(p, k - r), sketch = r + over;
    matrix work = clone(a);  // gesvdr destroys its input
    matrix s(1, k), u1(sketch, n), v1(sketch, m);
    SVDResult<matrix> out{matrix(m, r), matrix(1, r), matrix(r, n)};
    const cuda::lib::SolverParams params;
    const auto [device_bytes, host_bytes] =
        cuda::lib::gesvdr_workspace<T>(solver(), params, n, m, r, over, niters, work.data(), n, s.data(), u1.data(), n,
                                       v1.data(), m);
    cuda::DeviceBuffer<char> device_ws(device_bytes);
    std::vector<char> host_ws(host_bytes);
    cuda::DeviceBuffer<int> info(1);
    cuda::lib::gesvdr<T>(solver(), params, n, m, r, over, niters, work.data(), n, s.data(), u1.data(), n, v1.data(), m,
                         device_ws.data(), device_bytes, host_ws.data(), host_bytes, info.data());
    check_info(info, "svd_randomized_top (cusolverDnXgesvdr)");  // synchronises: host_ws is no longer in use
    copy(cuda::DeviceView<const T>(s.data(), 1, r, k), out.S);
    copy(cuda::DeviceView<const T>(u1.data(), r, n, n), out.Vt);
    cuda::lib::transpose(blas(), cuda::to_int(r, "svd_randomized_top rank"), cuda::to_int(m, "svd_randomized_top rows"),
                         v1.data(), cuda::to_int(m, "svd_randomized_top rows"), out.U.data(), int(r));
    return out;
  }

  // A symmetric matrix reads the same in either order. syevdx returns the selected eigenvectors as
  // the first columns of its column-major work matrix; one transpose makes them row-major n x k.
  static EighResult<matrix> eigh(const_view a, Index lo, Index hi) {
    const Index n = a.rows();
    if (a.cols() != n || lo < 0 || hi < lo || hi >= n)
      throw shape_error(detail::concat("eigh: eigenpairs ", lo, "..", hi, " of a ", detail::shape_str(a.rows(), a.cols()),
                                       " matrix"));
    const Index k = hi - lo + 1;
    const int in = cuda::to_int(n, "eigh n");
    EighResult<matrix> r{matrix(1, k), matrix(n, k)};
    matrix work = clone(a), w(1, n);
    cuda::DeviceBuffer<T> ws(std::size_t(cuda::lib::syevdx_lwork(solver(), in, work.data(), in, int(lo) + 1, int(hi) + 1, w.data())));
    cuda::DeviceBuffer<int> info(1);
    int found = 0;
    cuda::lib::syevdx(solver(), in, work.data(), in, int(lo) + 1, int(hi) + 1, &found, w.data(), ws.data(), int(ws.size()),
                      info.data());
    check_info(info, "eigh (cusolverDn<t>syevdx)");
    if (found != k)
      throw numerical_error(detail::concat("eigh (cusolverDn<t>syevdx): ", found, " eigenpairs for the range ", lo, "..", hi));
    copy(cuda::DeviceView<const T>(w.data(), 1, k, n), r.values);
    cuda::lib::transpose(blas(), int(k), in, work.data(), in, r.vectors.data(), int(k));
    return r;
  }

  static QRResult<matrix> qr(const_view a) {
    const Index m = a.rows(), n = a.cols();
    if (m < n) throw shape_error(detail::concat("qr: thin QR needs rows >= cols, got ", detail::shape_str(m, n)));
    QRResult<matrix> r{matrix(m, n), zeros(n, n)};
    if (n == 0) return r;
    const int im = cuda::to_int(m, "qr rows"), in = cuda::to_int(n, "qr cols");
    matrix f(n, m);  // A column-major (m x n, ld m), factored in place
    cuda::lib::transpose(blas(), im, in, a.data(), ld(a), f.data(), im);
    cuda::DeviceBuffer<T> tau(static_cast<std::size_t>(n));
    cuda::DeviceBuffer<int> info(1);
    {
      cuda::DeviceBuffer<T> ws(std::size_t(cuda::lib::geqrf_lwork(solver(), im, in, f.data(), im)));
      cuda::lib::geqrf(solver(), im, in, f.data(), im, tau.data(), ws.data(), int(ws.size()), info.data());
      check_info(info, "qr (cusolverDn<t>geqrf)");
    }
    // R: the upper triangle of the first n rows, transposed into row-major, the rest zeroed.
    cuda::lib::transpose(blas(), in, in, f.data(), im, r.R.data(), in);
    cuda::kernels::zero_strict_triangle<T>(r.R, false, stream());
    {
      cuda::DeviceBuffer<T> ws(std::size_t(cuda::lib::orgqr_lwork(solver(), im, in, in, f.data(), im, tau.data())));
      cuda::lib::orgqr(solver(), im, in, in, f.data(), im, tau.data(), ws.data(), int(ws.size()), info.data());
      check_info(info, "qr (cusolverDn<t>orgqr)");
    }
    cuda::lib::transpose(blas(), in, im, f.data(), im, r.Q.data(), in);
    return r;
  }

  // Row-major lower L is column-major upper: potrf(UPPER) on the memory gives A = U^T U with
  // U = L^T, and the other triangle (still holding A) is zeroed.
  static matrix cholesky(const_view a) {
    if (a.rows() != a.cols())
      throw shape_error(detail::concat("cholesky: matrix is ", detail::shape_str(a.rows(), a.cols())));
    matrix l = clone(a);
    if (l.size() == 0) return l;
    const int in = cuda::to_int(l.rows(), "cholesky n");
    cuda::DeviceBuffer<T> ws(std::size_t(cuda::lib::potrf_lwork(solver(), CUBLAS_FILL_MODE_UPPER, in, l.data(), in)));
    cuda::DeviceBuffer<int> info(1);
    cuda::lib::potrf(solver(), CUBLAS_FILL_MODE_UPPER, in, l.data(), in, ws.data(), int(ws.size()), info.data());
    const int bad = read_info(info);
    if (bad > 0)
      throw numerical_error(detail::concat("cholesky: matrix is not positive definite (leading minor ", bad, ")"));
    if (bad < 0) throw device_error(detail::concat("cholesky (cusolverDn<t>potrf): argument ", -bad, " is invalid"));
    cuda::kernels::zero_strict_triangle<T>(l, true, stream());
    return l;
  }

 private:
  static cudaStream_t stream() { return cuda::context().stream(); }
  static cublasHandle_t blas() { return cuda::context().blas(); }
  static cusolverDnHandle_t solver() { return cuda::context().solver(); }
  static cublasOperation_t op(Trans t) { return t == Trans::yes ? CUBLAS_OP_T : CUBLAS_OP_N; }
  /// cuBLAS's leading dimension of a view: its row stride (at least 1, as cuBLAS requires).
  static int ld(const_view v) { return cuda::to_int(std::max<Index>(v.ld(), 1), "leading dimension"); }
  static int bf16_ld(bf16_const_view v) { return cuda::to_int(std::max<Index>(v.ld(), 1), "leading dimension"); }

  static int read_info(const cuda::DeviceBuffer<int>& info) {
    int host = 0;
    cuda::check(cudaMemcpyAsync(&host, info.data(), sizeof(int), cudaMemcpyDeviceToHost, stream()), "cudaMemcpyAsync (info)");
    cuda::context().synchronize("cudaStreamSynchronize (info)");
    return host;
  }
  static void check_info(const cuda::DeviceBuffer<int>& info, const char* what) {
    const int bad = read_info(info);
    if (bad > 0) throw numerical_error(detail::concat(what, " did not converge (info ", bad, ")"));
    if (bad < 0) throw device_error(detail::concat(what, ": argument ", -bad, " is invalid"));
  }

  static void same_shape(const_view a, const_view b, const char* what) {
    if (a.rows() != b.rows() || a.cols() != b.cols())
      throw shape_error(detail::concat(what, ": ", detail::shape_str(a.rows(), a.cols()), " and ",
                                       detail::shape_str(b.rows(), b.cols())));
  }
  // The nr x nc block of m at (r0, c0), checked: a view with m's row stride.
  template <class E>
  static cuda::DeviceView<E> sub(cuda::DeviceView<E> m, Index r0, Index c0, Index nr, Index nc) {
    check_block(m.rows(), m.cols(), r0, c0, nr, nc);
    return {m.data() + r0 * m.ld() + c0, nr, nc, m.ld()};
  }
  static void check_block(Index rows, Index cols, Index r0, Index c0, Index nr, Index nc) {
    if (r0 < 0 || c0 < 0 || nr < 0 || nc < 0 || r0 + nr > rows || c0 + nc > cols)
      throw shape_error(detail::concat("block (", r0, ", ", c0, ") of size ", detail::shape_str(nr, nc), " outside a ",
                                       detail::shape_str(rows, cols), " matrix"));
  }
  // A vector is 1 x n or n x 1; its elements are 1 apart in the first case and ld apart in the second.
  static void require_vector(const_view v, Index n, const char* what) {
    if (v.size() != n || (v.rows() != 1 && v.cols() != 1))
      throw shape_error(detail::concat(what, " is ", detail::shape_str(v.rows(), v.cols()), ", expected ", n, " values"));
  }
  static Index vector_stride(const_view v) { return v.rows() == 1 ? 1 : v.ld(); }
};

static_assert(Backend<CudaBackend<float>>, "CudaBackend<float> must satisfy milora::Backend");
static_assert(Backend<CudaBackend<double>>, "CudaBackend<double> must satisfy milora::Backend");
static_assert(Bf16Backend<CudaBackend<float>> && Bf16Backend<CudaBackend<double>>,
              "CudaBackend must offer bf16 frozen weights (milora/core/weight_storage.hpp)");

}  // namespace milora
