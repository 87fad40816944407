// The one Swift runtime entry point the IPC core calls directly. A declaration only: the
// function lives in libswiftCore, which every Swift program links.
#pragma once

// Retains a Swift object unless it has begun to deinitialize (what a weak load does, without a
// side table): returns the object, retained, or NULL. Part of the Swift runtime's exported ABI.
// `object` must point at live memory: the caller keeps it with an unowned reference.
extern void *swift_tryRetain(void *object);
