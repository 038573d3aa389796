// milora's version, the one number the build (CMakeLists.txt reads it from here), the installed
// package (miloraConfigVersion.cmake) and every tool's --version report.
#pragma once

#define MILORA_VERSION_MAJOR 0
#define MILORA_VERSION_MINOR 1
#define MILORA_VERSION_PATCH 0
#define MILORA_VERSION_STRING "0.1.0"
