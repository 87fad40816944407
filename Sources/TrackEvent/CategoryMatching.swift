// Which categories a session's TrackEventConfig turns on, by Perfetto's rules
// (track_event_internal.cc, IsCategoryEnabled), in three passes: exact names, then `prefix*`
// patterns, then the `*` wildcard. In each pass: an enabled category wins, then a disabled
// category, then a disabled tag (by default `slow` and `debug`, unless the config lists tags of
// its own), then an enabled tag. A category no pass decides is on.

import TracingAPI

enum CategoryMatching {
    enum Pass { case exact, pattern, wildcard }

    /// Whether `pattern` matches `name` in `pass`.
    static func matches(_ pattern: String, _ name: String, in pass: Pass) -> Bool {
        switch pass {
        case .exact:
            return !pattern.contains("*") && pattern == name
        case .pattern:
            guard pattern.count > 1, pattern.hasSuffix("*") else { return !pattern.contains("*") && pattern == name }
            return name.hasPrefix(pattern.dropLast())
        case .wildcard:
            return pattern == "*" || (!pattern.contains("*") && pattern == name)
        }
    }

    static func any(_ patterns: [String], match name: String, in pass: Pass) -> Bool {
        patterns.contains { matches($0, name, in: pass) }
    }

    /// Whether a category with `name` and `tags` is recorded under `config`.
    static func isEnabled(name: String, tags: [String], config: Perfetto_Protos_TrackEventConfig) -> Bool {
        for pass in [Pass.exact, .pattern, .wildcard] {
            if any(config.enabledCategories, match: name, in: pass) { return true }
            if any(config.disabledCategories, match: name, in: pass) { return false }
            for tag in tags where isDisabledTag(tag, config: config, in: pass) { return false }
            for tag in tags where any(config.enabledTags, match: tag, in: pass) { return true }
        }
        return true
    }

    private static func isDisabledTag(_ tag: String, config: Perfetto_Protos_TrackEventConfig, in pass: Pass) -> Bool {
        if !config.disabledTags.isEmpty { return any(config.disabledTags, match: tag, in: pass) }
        if config.enabledTags.isEmpty { return matches("slow", tag, in: pass) || matches("debug", tag, in: pass) }
        return false
    }
}
