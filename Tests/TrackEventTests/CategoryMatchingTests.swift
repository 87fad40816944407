// Which categories a TrackEventConfig turns on: Perfetto's rules, pass by pass (exact names, then
// `prefix*` patterns, then `*`), enabled before disabled, and tags `slow`/`debug` off by default.

import TracingAPI
import Testing

@testable import TrackEvent

@Suite("Category matching")
struct CategoryMatchingTests {
    private func config(
        enabled: [String] = [], disabled: [String] = [], enabledTags: [String] = [], disabledTags: [String] = []
    ) -> Perfetto_Protos_TrackEventConfig {
        var config = Perfetto_Protos_TrackEventConfig()
        config.enabledCategories = enabled
        config.disabledCategories = disabled
        config.enabledTags = enabledTags
        config.disabledTags = disabledTags
        return config
    }

    private func on(_ name: String, tags: [String] = [], _ config: Perfetto_Protos_TrackEventConfig) -> Bool {
        CategoryMatching.isEnabled(name: name, tags: tags, config: config)
    }

    @Test func anEmptyConfigRecordsEverythingButSlowAndDebug() {
        let empty = config()
        #expect(on("app", empty))
        #expect(!on("app", tags: ["slow"], empty))
        #expect(!on("app", tags: ["debug"], empty))
        #expect(on("app", tags: ["io"], empty))
    }

    @Test func enablingOneCategoryDoesNotDisableOthers() {
        #expect(on("other", config(enabled: ["app"])))
        #expect(!on("other", config(enabled: ["app"], disabled: ["*"])))
        #expect(on("app", config(enabled: ["app"], disabled: ["*"])))
    }

    @Test func exactBeatsPatternBeatsWildcard() {
        #expect(on("net.http", config(enabled: ["net.*"], disabled: ["*"])))
        #expect(!on("net.http", config(enabled: ["*"], disabled: ["net.*"])), "a pattern decides before the wildcard")
        #expect(on("net.http", config(enabled: ["net.http"], disabled: ["net.*"])), "an exact name decides first")
        #expect(!on("net.http", config(enabled: ["net.*"], disabled: ["net.http"])))
    }

    @Test func aSlowCategoryNeedsItsExactNameOrATagList() {
        #expect(!on("gpu", tags: ["slow"], config(enabled: ["*"])), "the default disabled tags win in the exact pass")
        #expect(!on("gpu", tags: ["slow"], config(enabled: ["g*"])))
        #expect(on("gpu", tags: ["slow"], config(enabled: ["gpu"])))
        #expect(on("gpu", tags: ["slow"], config(enabledTags: ["slow"])), "a tag list replaces the default")
    }

    @Test func tagsEnableAndDisable() {
        #expect(!on("a", tags: ["io"], config(disabledTags: ["io"])))
        #expect(on("a", tags: ["io"], config(disabled: ["*"], enabledTags: ["io"])), "an exact tag decides before the wildcard")
        #expect(on("a", tags: ["io"], config(enabledTags: ["io"])))
        #expect(on("untagged", config(disabledTags: ["*"])), "untagged categories are untouched by tag rules")
    }
}
