// Module init of ear_stream._C. Importing it registers the ear:: operators (torch.ops.ear);
// no bindings are needed beyond this plain module object.
#include <Python.h>

static PyModuleDef ear_module = {PyModuleDef_HEAD_INIT, "_C", "EAR fused operators (torch.ops.ear)", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&ear_module); }
