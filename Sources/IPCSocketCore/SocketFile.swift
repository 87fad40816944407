// The file a listener bound at a unix socket path, known by its device and inode: when the
// listener closes it removes the path only if the path still names that file. Someone may have
// removed it meanwhile and started another service there, whose file must stay.

import Glibc
import IPCProtocol

struct SocketFile {
    let path: String
    let device: UInt64
    let inode: UInt64

    /// Removes the path if it still names this file.
    func removeIfUnchanged() {
        var info = stat()
        guard lstat(path, &info) == 0, UInt64(info.st_dev) == device, UInt64(info.st_ino) == inode else { return }
        unlink(path)
    }
}

extension SocketFile {
    /// The file at `path`, just bound.
    init(boundAt path: String, address: String) throws(IPCError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw IPCError.systemCall("lstat", errno: errno, address: address) }
        self.init(path: path, device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }
}
