/* The vector-width macros of _depthwise_vec.h and _conv_out_vec.h undefined, so that _nhwc.c can define
 * them again for its next vector width. */
#undef VEC
#undef VNAME
#undef VTARGET
#undef LANES
#undef VMASK
#undef VPART
#undef VALL
#undef VLOAD
#undef VSTORE
#undef VZERO
#undef VFMA
#undef VACT
#undef VACT_STORED
#undef VCOUNT
#undef VBCAST
#undef VLOADM
#undef VSTOREM
#undef OUT_VECTORS
#undef OUT_ACC
#undef OUT_RUN
#undef NHWC_ACC
#undef NHWC_RUN_OF
#undef NHWC_TAIL_OF
