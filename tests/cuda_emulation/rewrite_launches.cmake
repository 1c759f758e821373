# Turns a .cu file into C++ the CUDA emulation compiles (cmake -DIN=x.cu -DOUT=x.cc -P this):
#   Kernel<<<grid, block, shared, stream>>>(args)  ->  ::scanserve_emu::Launch("Kernel", Kernel,
#                                                       grid, block, shared, stream)(args)
#   extern __shared__ [__align__(n)] T name[];      ->  T* const name = <the launch's buffer>;
# Nothing else changes; #line keeps diagnostics and the emulator's line numbers on the original.
file(READ "${IN}" src)
string(REGEX REPLACE "([A-Za-z_][A-Za-z0-9_]*(<[A-Za-z0-9_, ]*>)?)<<<"
       "::scanserve_emu::Launch(\"\\1\", \\1, " src "${src}")
string(REGEX REPLACE ">>>([ \t\r\n]*)\\(" ")\\1(" src "${src}")
string(REGEX REPLACE
       "extern __shared__ (__align__\\([0-9]+\\) )?([A-Za-z_0-9:]+) ([A-Za-z_0-9]+)\\[\\];"
       "\\2* const \\3 = static_cast<\\2*>(::scanserve_emu::DynamicShared());" src "${src}")
if(src MATCHES "<<<|>>>|extern __shared__")
  message(FATAL_ERROR "${IN}: a launch or dynamic shared declaration the rewrite does not know")
endif()
file(WRITE "${OUT}" "// Generated from ${IN} by tests/cuda_emulation/rewrite_launches.cmake.\n#line 1 \"${IN}\"\n${src}")
