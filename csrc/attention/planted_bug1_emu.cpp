// Planted bug 1 of the prefill kernel (see FASTXF_PLANT_BUG in prefill_kernel.cuh),
// compiled for the emulator tests only, in its own namespace.
#define FASTXF_PLANT_BUG 1
#define prefill prefill_planted_bug1
#define FASTXF_PLANTED_FN run_planted_bug1
#include "attention/planted_bug_emu.h"
