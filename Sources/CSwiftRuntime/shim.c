// Nothing to compile: CSwiftRuntime.h declares a function of the Swift runtime. A C target
// needs one source file.
#include "CSwiftRuntime.h"
