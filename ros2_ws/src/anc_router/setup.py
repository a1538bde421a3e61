from setuptools import find_packages, setup

package_name = "anc_router"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="edge_vlm maintainers",
    maintainer_email="maintainers@edge-vlm.dev",
    description="Event frames to complexity level to route decision (ANC router node of "
                "edge_vlm).",
    license="Apache-2.0",
    # the node executable is named like the package: install/anc_router/lib/anc_router/anc_router
    entry_points={"console_scripts": ["anc_router = anc_router.node:main"]},
)
