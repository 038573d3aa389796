# Finds what milora's headers need. Used by the build tree and, installed, by miloraConfig.cmake,
# so that a consumer resolves the same dependencies the same way.
#
#   Eigen3::Eigen          required (Eigen 3.4)
#   milora::blas_lapack    OpenBLAS (CBLAS) + LAPACKE when found and MILORA_USE_LAPACKE is on:
#                          defines MILORA_HAS_LAPACKE. Otherwise an empty target, and the Eigen
#                          backend uses Eigen's own products and factorisations.
find_package(Eigen3 3.4 REQUIRED NO_MODULE)

if(NOT DEFINED MILORA_USE_LAPACKE)
  set(MILORA_USE_LAPACKE ON)
endif()

if(NOT TARGET milora::blas_lapack)
  add_library(milora::blas_lapack INTERFACE IMPORTED GLOBAL)
  if(MILORA_USE_LAPACKE)
    find_path(MILORA_LAPACKE_INCLUDE_DIR lapacke.h PATH_SUFFIXES openblas)
    find_path(MILORA_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas)
    find_library(MILORA_LAPACKE_LIBRARY NAMES lapacke)
    find_library(MILORA_OPENBLAS_LIBRARY NAMES openblas)
    if(MILORA_LAPACKE_INCLUDE_DIR AND MILORA_CBLAS_INCLUDE_DIR AND MILORA_LAPACKE_LIBRARY
       AND MILORA_OPENBLAS_LIBRARY)
      set_target_properties(milora::blas_lapack PROPERTIES
        INTERFACE_INCLUDE_DIRECTORIES "${MILORA_LAPACKE_INCLUDE_DIR};${MILORA_CBLAS_INCLUDE_DIR}"
        INTERFACE_LINK_LIBRARIES "${MILORA_LAPACKE_LIBRARY};${MILORA_OPENBLAS_LIBRARY}"
        INTERFACE_COMPILE_DEFINITIONS MILORA_HAS_LAPACKE)
      if(NOT milora_FIND_QUIETLY)
        message(STATUS "milora: OpenBLAS + LAPACKE found (${MILORA_OPENBLAS_LIBRARY})")
      endif()
    else()
      message(STATUS "milora: OpenBLAS/LAPACKE not found: Eigen's own products and factorisations")
    endif()
  endif()
endif()

#   milora::xtensor        xtensor + xtensor-blas (which brings BLAS and LAPACK) when found and
#                          MILORA_USE_XTENSOR is on: defines MILORA_HAS_XTENSOR, for
#                          milora/backend/xtensor.hpp. Not created otherwise; link it only if
#                          TARGET milora::xtensor.
if(NOT DEFINED MILORA_USE_XTENSOR)
  set(MILORA_USE_XTENSOR ON)
endif()
if(MILORA_USE_XTENSOR AND NOT TARGET milora::xtensor)
  find_package(xtensor QUIET)
  find_package(xtensor-blas QUIET)
  if(xtensor_FOUND AND xtensor-blas_FOUND)
    add_library(milora::xtensor INTERFACE IMPORTED GLOBAL)  # GLOBAL: visible above an add_subdirectory
    set_target_properties(milora::xtensor PROPERTIES
      INTERFACE_LINK_LIBRARIES "xtensor;xtensor-blas;milora::blas_lapack"
      INTERFACE_COMPILE_DEFINITIONS MILORA_HAS_XTENSOR)
    if(NOT milora_FIND_QUIETLY)
      message(STATUS "milora: xtensor ${xtensor_VERSION} + xtensor-blas ${xtensor-blas_VERSION} found: XtensorBackend available")
    endif()
  else()
    message(STATUS "milora: xtensor/xtensor-blas not found: no XtensorBackend")
  endif()
endif()

#   milora::io             nlohmann/json (Debian nlohmann-json3-dev) when found and MILORA_USE_IO is
#                          on: the file layer, milora/io.hpp (safetensors, Hugging Face folders,
#                          PEFT adapters). Defines MILORA_HAS_IO. Not created otherwise.
if(NOT DEFINED MILORA_USE_IO)
  set(MILORA_USE_IO ON)
endif()
if(MILORA_USE_IO AND NOT TARGET milora::io)
  find_package(nlohmann_json 3.9 QUIET)
  if(nlohmann_json_FOUND)
    add_library(milora::io INTERFACE IMPORTED GLOBAL)
    set_target_properties(milora::io PROPERTIES
      INTERFACE_LINK_LIBRARIES "milora::milora;nlohmann_json::nlohmann_json"
      INTERFACE_COMPILE_DEFINITIONS MILORA_HAS_IO)
    if(NOT milora_FIND_QUIETLY)
      message(STATUS "milora: nlohmann_json ${nlohmann_json_VERSION} found: milora::io (safetensors, PEFT) available")
    endif()
  else()
    message(STATUS "milora: nlohmann_json not found: no milora::io")
  endif()
endif()

#   milora::cuda           the CUDA toolkit's cudart, cuBLAS and cuSOLVER when found and
#                          MILORA_USE_CUDA is on: defines MILORA_HAS_CUDA, for
#                          milora/backend/cuda.hpp. The kernels are one source file a program
#                          compiles with nvcc: milora_add_cuda_kernels(<target>) adds it (the project
#                          must have enabled the CUDA language). Not created otherwise. A machine
#                          without a GPU still builds and links everything; CudaBackend throws
#                          device_error at run time.
if(NOT DEFINED MILORA_USE_CUDA)
  set(MILORA_USE_CUDA ON)
endif()
if(MILORA_USE_CUDA AND NOT TARGET milora::cuda)
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    add_library(milora::cuda INTERFACE IMPORTED GLOBAL)
    set_target_properties(milora::cuda PROPERTIES
      INTERFACE_LINK_LIBRARIES "milora::milora;CUDA::cudart;CUDA::cublas;CUDA::cusolver"
      INTERFACE_COMPILE_DEFINITIONS MILORA_HAS_CUDA)
    if(NOT milora_FIND_QUIETLY)
      message(STATUS "milora: CUDA toolkit ${CUDAToolkit_VERSION} found: CudaBackend available")
    endif()
  else()
    message(STATUS "milora: CUDA toolkit not found: no CudaBackend")
  endif()
endif()
#   milora::mpi            MPI (Debian: libopenmpi-dev) found by FindMPI when MILORA_USE_MPI is
#                          on: defines MILORA_HAS_MPI, for milora/distributed/mpi.hpp (the
#                          communicator policy over MPI). Not created otherwise.
#   milora::nccl           NCCL (the CUDA toolkit's libnccl and nccl.h) with milora::cuda and
#                          milora::mpi (NCCL is bootstrapped over MPI): defines MILORA_HAS_NCCL, for
#                          milora/distributed/nccl.hpp. Not created otherwise.
if(NOT DEFINED MILORA_USE_MPI)
  set(MILORA_USE_MPI ON)
endif()
if(MILORA_USE_MPI AND NOT TARGET milora::mpi)
  find_package(MPI QUIET COMPONENTS CXX)
  if(MPI_CXX_FOUND)
    add_library(milora::mpi INTERFACE IMPORTED GLOBAL)
    set_target_properties(milora::mpi PROPERTIES
      INTERFACE_LINK_LIBRARIES "milora::milora;MPI::MPI_CXX"
      INTERFACE_COMPILE_DEFINITIONS MILORA_HAS_MPI)
    if(NOT milora_FIND_QUIETLY)
      message(STATUS "milora: MPI ${MPI_CXX_VERSION} found: milora::mpi (data-parallel training over MPI) available")
    endif()
  else()
    message(STATUS "milora: MPI not found (Debian: libopenmpi-dev): no milora::mpi")
  endif()
endif()
if(TARGET milora::cuda AND TARGET milora::mpi AND NOT TARGET milora::nccl)
  find_path(MILORA_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  find_library(MILORA_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
  if(MILORA_NCCL_INCLUDE_DIR AND MILORA_NCCL_LIBRARY)
    add_library(milora::nccl INTERFACE IMPORTED GLOBAL)
    set_target_properties(milora::nccl PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${MILORA_NCCL_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "milora::cuda;milora::mpi;${MILORA_NCCL_LIBRARY}"
      INTERFACE_COMPILE_DEFINITIONS MILORA_HAS_NCCL)
    if(NOT milora_FIND_QUIETLY)
      message(STATUS "milora: NCCL found (${MILORA_NCCL_LIBRARY}): milora::nccl available")
    endif()
  else()
    message(STATUS "milora: NCCL not found next to the CUDA toolkit: no milora::nccl")
  endif()
endif()

# The kernels' source: next to the headers, in the source tree and once installed.
find_file(MILORA_CUDA_KERNELS_SOURCE milora/backend/cuda/kernels.cu
          PATHS ${CMAKE_CURRENT_LIST_DIR}/../include ${CMAKE_CURRENT_LIST_DIR}/../../../include
                ${CMAKE_CURRENT_LIST_DIR}/../../../../include
          NO_DEFAULT_PATH)
function(milora_add_cuda_kernels target)
  if(NOT MILORA_CUDA_KERNELS_SOURCE)
    message(FATAL_ERROR "milora_add_cuda_kernels: milora/backend/cuda/kernels.cu not found next to milora's headers")
  endif()
  target_sources(${target} PRIVATE ${MILORA_CUDA_KERNELS_SOURCE})
  # A target made before enable_language(CUDA) has no CUDA_ARCHITECTURES; give it the project's,
  # else A100 and H100 / H200.
  get_target_property(_milora_archs ${target} CUDA_ARCHITECTURES)
  if(NOT _milora_archs)
    if(CMAKE_CUDA_ARCHITECTURES)
      set_property(TARGET ${target} PROPERTY CUDA_ARCHITECTURES ${CMAKE_CUDA_ARCHITECTURES})
    else()
      set_property(TARGET ${target} PROPERTY CUDA_ARCHITECTURES 80 90)
    endif()
  endif()
  # The headers are C++20; set by flag because CMake up to 3.25 cannot map CUDA_STANDARD 20 to nvcc 13.
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
  target_link_libraries(${target} PRIVATE milora::cuda)
endfunction()
