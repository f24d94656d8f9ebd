// doctest's runner (its main and implementation), compiled once per build flavor and linked into
// every test binary (Makefile: $(BUILD)/doctest/*.o). Compiled into each test it cost 2.6 s per
// binary at -O1, 4 s at -O3 and 18 s under ASan+UBSan: about a third of `make test`'s build time.
// test_robust.cpp keeps its own main (it removes its temporary files after the run).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
