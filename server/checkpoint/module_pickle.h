// Whole pickled nn.Modules (`torch.save(model)`, YOLOv5's {'model': Model,
// 'ema': ...}) read as their state_dicts. A module object is an opaque value
// whose BUILD state (the instance __dict__) holds `_parameters`, `_buffers`
// and `_modules` dicts; it is replaced in the value tree by a dict of dotted
// names -> tensors in state_dict order (a module's parameters, then its
// persistent buffers, then its children), skipping None entries and the
// buffers named in `_non_persistent_buffers_set`. Nothing of the module's
// class is called; other attributes are dropped from the tree, the globals
// stay reported. TorchScript archives are not touched (their modules carry
// attributes, not these dicts).
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_MODULE_PICKLE_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_MODULE_PICKLE_H_

#include "server/checkpoint/checkpoint.h"

namespace weightgate::checkpoint {

// True when `v` is a pickled nn.Module as described above.
bool IsModuleObject(const Value* v);

// Rewrites every module object reachable from checkpoint->root through
// dicts, lists, tuples and object states; returns how many were rewritten
// and notes each path in checkpoint->metadata ("module_pickle=model").
int ReadModulesAsStateDicts(Checkpoint* checkpoint);

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_MODULE_PICKLE_H_
