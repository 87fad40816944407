// What a relay says about its machine in InitRelay (Perfetto's SystemInfo): the kernel's names,
// page size, CPUs, memory and time zone, as Perfetto's relay fills them in.

#if canImport(Glibc)
import Glibc
#endif

enum MachineSystemInfo {
    /// This machine's system info; `serviceVersion` names the relay's build.
    static func current(serviceVersion: String) -> Perfetto_Protos_SystemInfo {
        var info = Perfetto_Protos_SystemInfo()
        info.tracingServiceVersion = serviceVersion
        var names = utsname()
        if uname(&names) == 0 {
            info.utsname.sysname = text(&names.sysname)
            info.utsname.version = text(&names.version)
            info.utsname.release = text(&names.release)
            info.utsname.machine = text(&names.machine)
        }
        let pageSize = sysconf(Int32(_SC_PAGESIZE))
        if pageSize > 0 { info.pageSize = UInt32(pageSize) }
        let cpus = sysconf(Int32(_SC_NPROCESSORS_CONF))
        if cpus > 0 { info.numCpus = UInt32(cpus) }
        let pages = sysconf(Int32(_SC_PHYS_PAGES))
        if pages > 0, pageSize > 0 { info.systemRamBytes = UInt64(pages) * UInt64(pageSize) }
        var now = time(nil)
        var local = tm()
        if localtime_r(&now, &local) != nil { info.timezoneOffMins = Int32(local.tm_gmtoff / 60) }
        return info
    }

    private static func text<T>(_ field: inout T) -> String {
        withUnsafeBytes(of: &field) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}
